"""Entropic solver steps for factored statistics G = FᵀF, C = FᵀB (F: T centred rows / √T, T < p).

A Gemm after Flatten sees one row per calibration sample but reads p = C·H·W columns (25 088 for
VGG-16): its (p, p) Gram matrix takes gigabytes and a (p, p) Cholesky per round is out of reach. In
sample space every step costs (T, T) factorisations and products linear in p instead, exactly.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .refit import cholesky_jittered

_CHUNK = 2**22  # elements of a scratch block (32 MB)


def _sample_factor(F: np.ndarray, s: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(FS, L) with L the lower Cholesky factor of εI + FS²Fᵀ (T, T)."""
    Fs = F * s
    K = Fs @ Fs.T
    K.flat[:: K.shape[0] + 1] += eps
    return Fs, cholesky_jittered(K.copy)


def lambda_step(F: np.ndarray, B: np.ndarray, s: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Λᵀ = (SGS + εI)⁻¹SC (doc §4) by the push-through identity: Λᵀ = SFᵀQ, Q = (εI + FS²Fᵀ)⁻¹B.

    One (T, T) Cholesky instead of a (p, p) one; returns (Λᵀ (p, M), Q (T, M)).
    """
    Fs, L = _sample_factor(F, s, eps)
    Q = backend.cho_solve(L, B)
    return Fs.T @ Q, Q


def outer_step(F: np.ndarray, kernel: np.ndarray, s: np.ndarray, eps: float,
               dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the solver reads of the Λ-step's Λᵀ = SFᵀK⁻¹B (:func:`lambda_step`, K = εI + FS²Fᵀ), from ``kernel``
    = BBᵀ (T, T) and without Λᵀ itself: ΛᵀΛ = SFᵀ(K⁻¹BBᵀK⁻¹)FS (p, p; its last product in ``dtype``),
    (C ∘ Λᵀ)1 = s ∘ diag(Fᵀ(BBᵀK⁻¹)F) (p,), and the factor of K. T³ + T²p + p²T flops a round instead of the
    pTM of Λᵀ and the (T + r)p² of :func:`block_hadamard` (a class head of 1 280 columns read by 256 samples)."""
    Fs, L = _sample_factor(F, s, eps)
    right = backend.cho_solve(L, kernel)      # K⁻¹BBᵀ
    inner = backend.cho_solve(L, right.T)     # K⁻¹BBᵀK⁻¹
    outer = Fs.T.astype(dtype) @ (inner @ Fs).astype(dtype, copy=False)
    return outer, s * np.einsum("ti,ti->i", F, right.T @ F), L


def explicit(F: np.ndarray, B: np.ndarray, s: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Λᵀ = SFᵀK⁻¹B from the factor of K that :func:`outer_step` returned."""
    return (F * s).T @ backend.cho_solve(factor, B)


def coupling(F: np.ndarray, B: np.ndarray, s: np.ndarray, Q: np.ndarray, channels: np.ndarray,
             n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A = Eᵀ(G ∘ ΛᵀΛ)E and the per-column sums Σ_m C_im Λᵀ_im for Λᵀ = SFᵀQ of :func:`lambda_step`.

    ΛᵀΛ = PPᵀ with P = SFᵀV (p, min(T, M)), where QQᵀ = VVᵀ (V = Rᵀ of the QR Qᵀ = ŨR), so A is a
    :func:`block_hadamard`; Σ_m C_im Λᵀ_im = s_i f_iᵀ(BQᵀ)f_i with f_i the column i of F.
    """
    V = np.linalg.qr(Q.T, mode="r").T
    A = block_hadamard(F, (F * s).T @ V, channels, n_channels)
    return A, s * np.einsum("ti,ti->i", F, (B @ Q.T) @ F)


def block_hadamard(F: np.ndarray, P: np.ndarray, channels: np.ndarray, n_channels: int) -> np.ndarray:
    """Eᵀ((FᵀF) ∘ (PPᵀ))E for F (T, p) and P (p, r), without a (p, p) array (E: column → channel).

    Entry (d, e) is Σ_{i∈d, j∈e} (FᵀF)_ij (PPᵀ)_ij = ⟨Y_d, Y_e⟩ with Y_d = F_{:,d} P_{d,:} (T, r), the
    product over channel d's columns: T·r·(p + D²) flops, the cheaper way with many columns per channel.
    With few, rows of FᵀF and PPᵀ are formed a block of channels at a time: (T + r)·p² flops.
    """
    T, p = F.shape
    r = P.shape[1]
    order = np.argsort(channels, kind="stable")
    counts = np.bincount(channels, minlength=n_channels)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    A = np.zeros((n_channels, n_channels))
    if T * r * (p + n_channels**2) <= (T + r) * p**2:
        width = int(counts.max())
        slots = np.full((n_channels, width), p)  # column of each (channel, slot); p: padding, a zero column
        slots[channels[order], np.arange(p) - bounds[channels[order]]] = order
        Fd = np.ascontiguousarray(np.concatenate([F, np.zeros((T, 1))], axis=1)[:, slots].transpose(1, 0, 2))
        rows = np.minimum(slots, p - 1)  # Fd (D, T, width) is 0 in padding slots: any row of P will do there
        step = max(1, _CHUNK // (n_channels * max(T, width)))
        for start in range(0, r, step):
            Y = np.matmul(Fd, P[:, start:start + step][rows]).reshape(n_channels, -1)
            A += Y @ Y.T
        return A
    Fs, Ps = F[:, order], P[order]
    present = np.flatnonzero(counts)
    group = max(1, _CHUNK // (p * int(counts.max())))
    for first in range(0, present.size, group):
        chans = present[first:first + group]
        lo, hi = bounds[chans[0]], bounds[chans[-1] + 1]
        H = (Fs[:, lo:hi].T @ Fs) * (Ps[lo:hi] @ Ps.T)  # rows lo:hi of (FᵀF) ∘ (PPᵀ), columns sorted
        H = np.add.reduceat(H, bounds[present], axis=1)
        A[np.ix_(chans, present)] = np.add.reduceat(H, bounds[chans] - lo, axis=0)
    return A
