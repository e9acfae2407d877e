"""Exact least-squares re-fit of a consumer on the kept columns (doc §6)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg

from . import backend, statistics
from .statistics import CentredStatistics

_EPS = np.finfo(np.float64).eps
# columns from which the error curves' factorisations and triangular solves run in float32 (their sums in float64):
# the YOLOv8n layout detector's in-sample curves 0.69 → 0.45 s on one core (its folds' 2.9 → 2.3 s), every curve within
# 1e-7 of float64's
CURVE_SINGLE_FROM = 512


@dataclass(frozen=True)
class Refit:
    """Re-fitted consumer on the kept columns."""

    coef: np.ndarray
    intercept: np.ndarray
    error: float
    shift_passes: int = 0   # shift passes that fitted it to what its activation passes (``rectified.py``)


def _fortran(H: np.ndarray) -> np.ndarray:
    """A symmetric matrix in Fortran order without copying (its transpose), which LAPACK factors fastest."""
    return H.T if H.flags.c_contiguous else H


def cholesky_jittered(make_matrix: Callable[[], np.ndarray]) -> np.ndarray:
    """Lower Cholesky factor of the symmetric PSD matrix ``make_matrix()`` (a fresh array it may overwrite), its
    strict upper triangle left as the matrix had it: read its lower one only (:func:`backend.cho_solve`,
    ``solve_triangular(..., lower=True)``).

    If the matrix is numerically singular it is rebuilt with a growing diagonal jitter.
    """
    A = _fortran(make_matrix())
    n = A.shape[0]
    scale = float(np.trace(A)) / max(n, 1)
    scale = scale if scale > 0 else 1.0
    for attempt in range(8):
        if attempt:
            A = _fortran(make_matrix())
            A.flat[:: n + 1] += 1e-12 * scale * 100.0 ** (attempt - 1)
        try:
            return backend.cholesky(A, overwrite=True, clean=False)
        except np.linalg.LinAlgError:
            pass
    raise np.linalg.LinAlgError("Matrix is not positive semi-definite, even with diagonal jitter.")


def solve_psd(H: np.ndarray, B: np.ndarray, rebuild: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """H⁻¹B for symmetric PSD H: Cholesky, or an eigh pseudo-inverse when H is (near) singular. With ``rebuild``
    H is factored in place (a C- or Fortran-ordered buffer), and ``rebuild()`` makes it again for the eigh."""
    return _solve_psd(H, B, rebuild)[0]


def _solve_psd(H: np.ndarray, B: np.ndarray,
               rebuild: Callable[[], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`solve_psd`, and the Cholesky factor it solved with (None when it took the pseudo-inverse)."""
    n = H.shape[0]
    try:
        L = backend.cholesky(_fortran(H), overwrite=rebuild is not None, clean=False)
        pivots = np.diag(L)
        if pivots.min() ** 2 > n * _EPS * pivots.max() ** 2:
            return backend.cho_solve(L, B), L
    except np.linalg.LinAlgError:
        pass
    if rebuild is not None:
        H = rebuild()
    vals, vecs = scipy.linalg.eigh(H, check_finite=False)
    cutoff = n * _EPS * max(vals.max(initial=0.0), 0.0)
    inv = np.divide(1.0, vals, out=np.zeros_like(vals), where=vals > cutoff)
    return vecs @ (inv[:, None] * (vecs.T @ B)), None


@dataclass(frozen=True)
class RidgeFactor:
    """What a dense ridge re-fit factored: the lower Cholesky factor of G + λI (its lower triangle; the upper one is
    not cleared) at the absolute ``ridge`` and G·priorᵀ. A re-fit of the same Gram matrix to other targets (a shift
    pass's, ``rectified.py``) solves with them instead of factoring and multiplying again, to the same bits."""

    ridge: float
    lower: np.ndarray
    gram_prior: np.ndarray | None


class RidgeSolver:
    """λ ↦ the W (M, p) minimising E‖y − ȳ − W(x − x̄)‖² + λ‖W − prior‖² (prior 0 when None) over all columns
    of ``stats`` (see :meth:`CentredStatistics.restricted`): W = prior + Δ, Δᵀ = (G + λI)⁻¹(C − G priorᵀ); λ = 0
    gives minimum-norm least squares. Every λ is factored in the same buffer (no fresh p × p array per λ), and
    :attr:`factor` holds what the last call factored (dense statistics, where the Cholesky served), valid until the
    next call; ``reuse``, the factor of an earlier solver on the same G and prior, serves its ridge unfactored.

    Factored statistics are solved in sample space without G (push-through identity):
    Δᵀ = Fᵀ(F Fᵀ + λI)⁻¹(B − F priorᵀ), a (T, T) system.
    """

    def __init__(self, stats: CentredStatistics, prior: np.ndarray | None = None, reuse: RidgeFactor | None = None):
        self.stats, self.prior = stats, prior
        self.reuse = None if stats.factored else reuse
        self.factor: RidgeFactor | None = None
        self._gram_prior = None
        if stats.factored:
            self._gram = stats.F @ stats.F.T
            self._target = stats.B if prior is None else stats.B - stats.F @ prior.T
        else:
            self._gram = stats.G
            if prior is not None:
                self._gram_prior = reuse.gram_prior if reuse is not None else stats.G @ prior.T
            self._target = stats.C if prior is None else stats.C - self._gram_prior
        self._buffer: np.ndarray | None = None
        self._solved: tuple[float, np.ndarray] | None = None   # the last call's ridge and Δ where it solved by Cholesky

    def __call__(self, ridge: float) -> np.ndarray:
        if self.reuse is not None and self.reuse.ridge == ridge:
            delta = backend.cho_solve(self.reuse.lower, self._target)
            exact = True
        else:
            H = self._buffer = np.empty_like(self._gram) if self._buffer is None else self._buffer

            def ridged() -> np.ndarray:
                np.copyto(H, self._gram)
                H.flat[:: H.shape[0] + 1] += ridge
                return H

            delta, lower = _solve_psd(ridged(), self._target, rebuild=ridged)
            self.factor = (RidgeFactor(ridge, lower, self._gram_prior)
                           if lower is not None and not self.stats.factored else None)
            exact = lower is not None
        coef = (self.stats.F.T @ delta if self.stats.factored else delta).T
        self._solved = (ridge, coef) if exact and not self.stats.factored else None
        return coef if self.prior is None else self.prior + coef

    def relative_error(self, coef: np.ndarray) -> float:
        """:func:`relative_error` of ``coef``, the fit of the last call. Where that call solved G + λI by Cholesky,
        the normal equations G Wᵀ = C − λΔᵀ (Δ = W − prior) give the residual as c0 − tr(WC) − λ tr(WΔᵀ), without
        the M × p × p product tr(W G Wᵀ) (most of a wide layer's re-fit: VGG-16's 4 608-column ones, 512
        outputs); the same to round-off. Else (a pseudo-inverse, factored statistics) from the statistics."""
        if self._solved is None:
            return relative_error(self.stats, coef)
        ridge, delta = self._solved
        if self.stats.c0 <= 0:
            return 0.0
        explained = float(np.sum(coef * self.stats.C.T)) + ridge * float(np.sum(coef * delta))
        return max(float(self.stats.c0) - explained, 0.0) / self.stats.c0


def residual(stats: CentredStatistics, coef: np.ndarray) -> float:
    """E‖y − ȳ − W(x − x̄)‖² = c0 − 2 tr(W C) + tr(W G Wᵀ) for W = ``coef`` (M, p) over all columns of ``stats``."""
    if stats.factored:
        R = stats.B - stats.F @ coef.T
        return float(np.einsum("tm,tm->", R, R))
    return float(stats.c0) - 2.0 * float(np.sum(coef * stats.C.T)) + float(np.sum((coef @ stats.G) * coef))


def relative_error(stats: CentredStatistics, coef: np.ndarray) -> float:
    """:func:`residual` / c0, at least 0; 0 when c0 is 0."""
    if stats.c0 <= 0:
        return 0.0
    return max(residual(stats, coef), 0.0) / stats.c0


def columns_of(channel_of_column: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Indices of the columns that belong to any of `channels`, in column order."""
    return np.flatnonzero(np.isin(channel_of_column, channels))


def _check_columns(columns: np.ndarray, p: int) -> np.ndarray:
    columns = np.asarray(columns, dtype=np.intp).reshape(-1)
    if columns.size and (columns.min() < 0 or columns.max() >= p):
        raise ValueError(f"Column indices must lie in [0, {p}), got [{columns.min()}, {columns.max()}].")
    if np.unique(columns).size != columns.size:
        raise ValueError("Column indices must be unique.")
    return columns


def refit(stats: CentredStatistics, columns: np.ndarray, delta: float = 1e-6) -> Refit:
    """Ridge re-fit W = C_Iᵀ(G_II + λI)⁻¹, λ = δ·tr(G_II)/|I|, with the bias b = ȳ − W x̄_I.

    ``delta=0`` gives the exact (minimum-norm) least-squares fit. Below ``backend.SHARED_BLAS_FROM`` columns it runs on
    one BLAS thread (:func:`backend.blas_threads_for`).
    """
    columns = _check_columns(columns, stats.n_features)
    if columns.size == 0:
        error = 1.0 if stats.c0 > 0 else 0.0
        return Refit(np.zeros((stats.n_targets, 0)), stats.y_mean.copy(), error)
    kept = stats.restricted(columns)
    with backend.blas_threads_for(columns.size):
        solver = RidgeSolver(kept)
        coef = solver(delta * kept.gram_trace() / columns.size)
        intercept = stats.y_mean - coef @ kept.x_mean
        return Refit(coef, intercept, min(solver.relative_error(coef), 1.0))


def prefix_columns(channel_of_column: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns sorted by their channel's position in `order`, and the column count after each prefix."""
    order = np.asarray(order, dtype=np.intp).reshape(-1)
    if np.unique(order).size != order.size or (order.size and order.min() < 0):
        raise ValueError("order must list distinct non-negative channel indices.")
    size = max(int(channel_of_column.max(initial=-1)), int(order.max(initial=-1))) + 1
    position = np.full(size, order.size)
    position[order] = np.arange(order.size)
    column_position = position[channel_of_column]
    perm = np.argsort(column_position, kind="stable")
    counts = np.bincount(column_position, minlength=order.size + 1)[: order.size]
    n_cols = np.concatenate(([0], np.cumsum(counts)))
    return perm[: n_cols[-1]], n_cols


def error_curve(
    stats: CentredStatistics, channel_of_column: np.ndarray, order: np.ndarray, delta: float = 1e-6
) -> np.ndarray:
    """Relative re-fit error e[k] when keeping the first k channels of `order`, k = 0..len(order).

    One Cholesky of the column-permuted G + λI (λ = δ·tr(G)/p): with Z = L⁻¹C_perm the residual
    after the first m columns is c0 − Σ_{i<m} ‖Z_i‖² (the ridge-penalised residual); in float32 from
    ``CURVE_SINGLE_FROM`` columns (the sums in float64). Factored statistics
    take a (T, T) factorisation per prefix instead (:func:`_prefix_residuals`) where that costs less than forming
    G and one (p, p) factorisation.
    """
    channel_of_column = np.asarray(channel_of_column, dtype=np.intp).reshape(-1)
    if channel_of_column.shape != (stats.n_features,) or (channel_of_column.size and channel_of_column.min() < 0):
        raise ValueError(f"channel_of_column must hold {stats.n_features} non-negative channel indices.")
    perm, n_cols = prefix_columns(channel_of_column, order)
    if stats.c0 <= 0:
        return np.zeros(n_cols.size)
    if perm.size == 0:
        return np.ones(n_cols.size)
    ridge = delta * stats.gram_trace() / stats.n_features
    p = stats.n_features
    if stats.factored and p <= statistics.GRAM_FROM_ROWS and (n_cols.size - 1) * stats.F.shape[0] ** 3 > p ** 3:
        stats = stats.dense()  # one (p, p) factorisation costs less than a (T, T) one per prefix
    if stats.factored:
        return np.clip(_prefix_residuals(stats.F, stats.B, perm, n_cols, ridge) / stats.c0, 0.0, 1.0)

    L, Z = prefix_projection(stats, perm, ridge)
    explained = prefix_sums(np.einsum("im,im->i", Z, Z, dtype=np.float64))
    return np.clip((stats.c0 - explained[n_cols]) / stats.c0, 0.0, 1.0)


def prefix_projection(stats: CentredStatistics, perm: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """L, the lower Cholesky factor of G + ``ridge``·I with rows and columns in the order ``perm``, and Z = L⁻¹C_perm:
    L's leading blocks factor every prefix of ``perm``, and the prefix re-fit of the first m columns explains
    Σ_{i<m} ‖Z_i‖². In float32 from ``CURVE_SINGLE_FROM`` columns (sum what they give in float64)."""
    dtype = np.dtype(np.float32 if perm.size >= CURVE_SINGLE_FROM else np.float64)
    H = np.empty((perm.size, perm.size), dtype=dtype)

    def permuted() -> np.ndarray:
        statistics.submatrix(stats.G, perm, perm, out=H)
        H.flat[:: perm.size + 1] += ridge
        return H

    L = cholesky_jittered(permuted)
    Z = scipy.linalg.solve_triangular(L, stats.C[perm].astype(dtype, copy=False), lower=True, check_finite=False)
    return L, Z


def prefix_sums(terms: np.ndarray) -> np.ndarray:
    """0 and the running sums of ``terms`` in float64: a quantity for every prefix, the empty one first."""
    return np.concatenate(([0.0], np.cumsum(terms, dtype=np.float64)))


def _prefix_residuals(F: np.ndarray, B: np.ndarray, columns: np.ndarray, n_cols: np.ndarray,
                      ridge: float) -> np.ndarray:
    """Ridge-penalised residual min_W ‖B − F_m W‖² + λ‖W‖² = λ tr(Bᵀ(F_m F_mᵀ + λI)⁻¹B) of each prefix
    F_m = F[:, columns[:m]], m = n_cols[k]: a (T, T) Cholesky per prefix, no (p, p) array.

    λ is raised to at least 1e-12 of the mean eigenvalue tr(G)/p, the dense path's first jitter.
    """
    scale = float(np.einsum("ti,ti->", F, F)) / F.shape[1]
    ridge = max(ridge, 1e-12 * (scale if scale > 0 else 1.0))
    N = B @ B.T
    K = np.zeros((F.shape[0], F.shape[0]))
    K.flat[:: K.shape[0] + 1] = ridge
    out = np.empty(n_cols.size)
    start = 0
    for k, stop in enumerate(n_cols):
        part = F[:, columns[start:stop]]
        K += part @ part.T
        start = stop
        L = cholesky_jittered(K.copy)
        out[k] = ridge * float(np.trace(backend.cho_solve(L, N)))
    return out
