"""Entropic sparse regression of one channel group (doc §3–§7): functional core and estimator.

Weighted loss over the consumers j of a group (α_j = weight_j / c0_j, s = E_j w, S = diag(s)):

    L(w, Λ) = Σ_j α_j [c0_j − 2 tr(Λ_j S C_j) + tr(Λ_j S G_j S Λ_jᵀ) + ε_Λ,j ‖Λ_j‖²]
              + ε_w Σ_d w_d log w_d

with ε_Λ,j = ρ ḡ_j / D² (ḡ_j = tr(G_j)/p_j) in consumer j's own units and ε_w = τ. For a single
consumer of weight 1 this is the loss of doc §3 divided by c0, with ε_Λ = ρ ḡ/D² and ε_w = τ c0.
A raw ``eps_lambda`` replaces ε_Λ,j of every consumer; a raw ``eps_w`` replaces τ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.special

from . import backend, lowrank, statistics
from .refit import Refit, cholesky_jittered, columns_of, refit
from .statistics import CentredStatistics, block_sum, channel_runs, conv_layout, submatrix
from .ties import decreasing

W_STEPS = ("both", "lambda", "w")
_W_MIN = 1e-300
_LOG_W_MIN = np.log(_W_MIN)
# scales below which a channel leaves the Λ-step (s = 0), per the step's float type: far below round-off in L, and in
# float32 (from ``_SINGLE_FROM`` columns) high enough that no product of two scaled entries is subnormal, which
# LAPACK and BLAS handle 10× slower (VGG-16's 4 608-column rankings 18 → 10 s, every top-k set the same)
_S_MIN = {np.dtype(np.float64): 1e-60, np.dtype(np.float32): 1e-12}
_EPS = np.finfo(np.float64).eps
_SINGLE_FROM = 512  # columns from which a dense consumer's Λ-step runs in float32
_FAINT = 1e-9  # trace of S_b G_bb S_b, relative to ε_Λ, below which columns b leave the Λ-step's factorisation
_FAINT_MIN = 32  # fewer faint columns than this (or a 16th of the system) stay in it
_SETTLED = np.sqrt(2.0 * _EPS)  # a Newton step on a stationarity below this is the last one needed
_NEWTON_STEPS = 8  # Newton steps from the closed form before a channel's root is bracketed (:func:`_settled_logs`)
_PLAIN_ROUNDS = 3  # rounds before the first extrapolation (:func:`fit_entropic`)
_OUTER_FROM = 4  # outputs per column from which a dense consumer's Λ is carried as ΛᵀΛ (a CTC or class head)


@dataclass
class ConsumerProblem:
    """One consumer's data for a (joint) channel-group regression."""

    stats: CentredStatistics
    channel_of_column: np.ndarray
    weight: float = 1.0


@dataclass
class EntropicFit:
    """Result of :func:`fit_entropic`."""

    w: np.ndarray
    lambdas: list[np.ndarray]
    loss_history: list[float]
    n_iter: int


@dataclass
class _Term:
    """A consumer prepared for the solver. Dense statistics come with a (p, p) scratch buffer reused every
    round; factored ones hold FᵀF and BBᵀ up to ``statistics.GRAM_FROM_ROWS`` columns (their Λ carried as
    :class:`_Outer`), and past it keep (Λᵀ, s, Q) of their latest Λ-step, from which the coupling is formed.

    From ``_SINGLE_FROM`` columns on, the dense Λ-step and coupling run in float32: the Cholesky, the
    solve and ΛᵀΛ take half the time (VGG-16's 4 608-column groups: 1.2 → 0.5 s a round on 2 cores; the
    YOLOv8n lookalike's 512–2 303-column groups: its whole ranking 13.4 → 11.3 s, the same top-k sets at every
    k), and only the ranking uses them; the loss, the w-steps and every re-fit stay float64. The conditioning
    is set by ρ, not by p: ε_Λ = ρ ḡ / D² next to S G S ≈ G / D² while w is near uniform."""

    stats: CentredStatistics
    channels: np.ndarray
    alpha: float
    eps_lambda: float
    work: np.ndarray | None = None
    gram: np.ndarray | None = None      # G and C as the dense Λ-step uses them (float32 if wide); FᵀF if held
    cross: np.ndarray | None = None
    layout: int = 0                     # k when channel d owns columns [dk, dk + k) (a Conv's layout), else 0
    runs: int = 0                       # k when every channel it reads owns k consecutive columns, else 0
    active: tuple[np.ndarray, np.ndarray] | None = None  # columns of the latest Λ-step and their G, when not all
    last_step: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    kernel: np.ndarray | None = None    # C Cᵀ with _OUTER_FROM × more outputs than columns; BBᵀ if held

    @property
    def c0(self) -> float:
        return self.stats.c0

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (p, M) of Λᵀ."""
        return self.stats.n_features, self.stats.n_targets


@dataclass
class _Outer:
    """Λᵀ (p, M) of a consumer with many more outputs than columns, or with factored statistics of at most
    ``statistics.GRAM_FROM_ROWS`` columns, carried as what the solver reads of it: ``outer`` = ΛᵀΛ (p, p) and
    ``cross`` = (C ∘ Λᵀ)1 (p,). Its Λ-step costs O(p³) instead of O(p²M) (a CTC head of 18 385 characters over
    120 columns: 100× less), or O(p²T) in sample space (:func:`lowrank.outer_step`). ``step`` keeps the Λ-step's
    Cholesky factor and scales (and columns, when dense), and ``scale`` the row scales of the w-steps since, to
    form Λᵀ itself (:func:`_explicit`)."""

    outer: np.ndarray
    cross: np.ndarray
    step: tuple[np.ndarray, ...]   # (factor, s, columns) when dense, (factor of K, s) when factored
    scale: np.ndarray


def _squared_norm(lt: np.ndarray | _Outer) -> float:
    """‖Λ‖²."""
    if isinstance(lt, _Outer):
        return float(np.trace(lt.outer, dtype=np.float64))
    return float(np.einsum("im,im->", lt, lt, dtype=np.float64))


def _row_norms(lt: np.ndarray | _Outer) -> np.ndarray:
    """‖λ_i‖² of every row i of Λᵀ."""
    if isinstance(lt, _Outer):
        return np.diagonal(lt.outer).astype(np.float64)
    return np.einsum("im,im->i", lt, lt, dtype=np.float64)


def _scale_rows(lt: np.ndarray | _Outer, ratio: np.ndarray) -> None:
    """Λᵀ ← diag(ratio) Λᵀ, in place. A ratio past the float range of ΛᵀΛ (float32 on wide consumers) scales a
    channel whose weights are 0 (the w-step takes its w to the floor only then): it is clipped so that its rows
    stay 0 rather than 0 · inf."""
    if isinstance(lt, _Outer):
        r = np.minimum(ratio, np.finfo(lt.outer.dtype).max).astype(lt.outer.dtype)
        lt.outer *= r[:, None]
        lt.outer *= r[None, :]
        lt.cross *= ratio
        lt.scale *= ratio
    else:
        lt *= ratio[:, None]


def _explicit(term: _Term, lt: np.ndarray | _Outer) -> np.ndarray:
    """Λᵀ itself, formed once for the result where the rounds carried only ΛᵀΛ."""
    if not isinstance(lt, _Outer):
        return lt
    if term.stats.factored:
        factor, s = lt.step
        return lowrank.explicit(term.stats.F, term.stats.B, s * lt.scale, factor)
    factor, s, active = lt.step
    lam_t = np.zeros(term.cross.shape, dtype=term.cross.dtype)
    lam_t[active] = backend.cho_solve(factor, s[:, None] * term.cross[active])
    return lam_t * lt.scale[:, None].astype(lam_t.dtype)


# --------------------------------------------------------------------------- preparation


def check_channels(channel_of_column: np.ndarray, p: int, n_channels: int) -> np.ndarray:
    """Validate a consumer's column → channel map and return it as intp."""
    channels = np.asarray(channel_of_column)
    if channels.shape != (p,) or not np.issubdtype(channels.dtype, np.integer):
        raise ValueError(
            f"channel_of_column must be an integer array of shape ({p},), got {channels.dtype} {channels.shape}."
        )
    if p and (channels.min() < 0 or channels.max() >= n_channels):
        raise ValueError(f"channel_of_column values must lie in [0, {n_channels}).")
    return channels.astype(np.intp, copy=False)


def _prepare(
    problems: list[ConsumerProblem], n_channels: int, rho: float, eps_lambda: float | None
) -> list[_Term]:
    if not problems:
        raise ValueError("At least one consumer problem is needed.")
    terms = []
    for problem in problems:
        stats = problem.stats
        p = stats.n_features
        if p == 0:
            raise ValueError("A consumer reads no columns; drop it from the problem list.")
        if not (np.isfinite(problem.weight) and problem.weight >= 0):
            raise ValueError(f"Consumer weight must be finite and >= 0, got {problem.weight}.")
        channels = check_channels(problem.channel_of_column, p, n_channels)
        alpha = problem.weight / stats.c0 if stats.c0 > 0 else 0.0
        eps = rho * stats.gram_trace() / p / n_channels**2 if eps_lambda is None else eps_lambda
        if stats.factored:
            if p <= statistics.GRAM_FROM_ROWS:
                terms.append(_Term(stats, channels, alpha, float(eps), gram=stats.F.T @ stats.F,
                                   layout=conv_layout(channels, n_channels), kernel=stats.B @ stats.B.T))
            else:
                terms.append(_Term(stats, channels, alpha, float(eps)))
            continue
        dtype = _step_dtype(p)
        gram, cross = stats.G.astype(dtype, copy=False), stats.C.astype(dtype, copy=False)
        layout = conv_layout(channels, n_channels)
        work = np.empty_like(gram)  # the Λ-step's scaled Gram matrix
        kernel = (stats.C @ stats.C.T).astype(dtype) if stats.n_targets >= _OUTER_FROM * p else None
        terms.append(_Term(stats, channels, alpha, float(eps), work, gram, cross, layout=layout,
                           runs=channel_runs(channels), kernel=kernel))
    return terms


def _initial_w(w_init: np.ndarray | None, n_channels: int) -> np.ndarray:
    if w_init is None:
        return np.full(n_channels, 1.0 / n_channels)
    w = np.asarray(w_init, dtype=np.float64)
    if w.shape != (n_channels,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"w_init must be {n_channels} non-negative finite values with a positive sum.")
    return w / w.sum()


# --------------------------------------------------------------------------- loss pieces


def _entropy(w: np.ndarray) -> float:
    """Σ w log w with 0 log 0 = 0."""
    return float(np.sum(w * np.log(w, out=np.zeros_like(w), where=w > 0)))


def _w_objective(w: np.ndarray, A: np.ndarray, beta: np.ndarray, eps_w: float) -> float:
    """The w-dependent part of L for fixed Λ: wᵀAw − 2βᵀw + ε_w Σ w log w."""
    return float(w @ A @ w - 2.0 * beta @ w) + eps_w * _entropy(w)


def _loss(
    terms: list[_Term], lam_t: list[np.ndarray], w: np.ndarray, A: np.ndarray, beta: np.ndarray, eps_w: float
) -> float:
    """L(w, Λ) from the coupling (A, β) of the current Λ: Σαc0 + Σαε_Λ‖Λ‖² + wᵀAw − 2βᵀw + ε_w H(w)."""
    const = sum(t.alpha * t.c0 for t in terms)
    ridge = sum(t.alpha * t.eps_lambda * _squared_norm(lt) for t, lt in zip(terms, lam_t))
    return const + ridge + _w_objective(w, A, beta, eps_w)


def _hadamard_block_sum(lt: np.ndarray, term: _Term, n_channels: int) -> np.ndarray:
    """Eᵀ(G ∘ ΛᵀΛ)E of a dense consumer.

    Only the lower triangle of ΛᵀΛ is formed (syrk, half the multiply-adds): with L the sums of G ∘ that triangle
    per pair of channels, the whole is L + Lᵀ − diag(each channel's sum of its diagonal), whichever channel owns
    each column (G ∘ ΛᵀΛ is symmetric, and only its diagonal lies in both triangles). Rows of Λ that the Λ-step left
    at 0 (channels at s = 0) drop out first, except with a column per channel while most are active. Where every
    channel owns k consecutive columns (``term.runs``: a Conv's unfolded input, also over part of a group) the sums
    take a reshape, else a sort and ``reduceat``.
    """
    active, gram = term.active if term.active is not None else (None, term.gram)
    if active is not None and term.runs == 1 and 3 * active.size >= 2 * term.channels.size:
        active, gram = None, term.gram   # their zero rows cost less than scattering the product into D × D
    channels = term.channels
    if active is not None:  # the Λ-step left out the channels at s = 0: their rows of Λ are 0
        lt, channels = lt[active], channels[active]
    syrk = scipy.linalg.get_blas_funcs("syrk", (lt,))
    lower = syrk(1.0, lt.T, trans=1).T  # the upper triangle in Fortran order is the lower one in C order
    if term.runs > 1:   # G ∘ the triangle summed over each channel's rows in one pass, then over its columns
        present = channels[::term.runs]
        n, k = present.size, term.runs
        local = np.repeat(np.arange(n), k)
        rows = np.einsum("akp,akp->ap", lower.reshape(n, k, -1), gram.reshape(n, k, -1))
        block = rows.reshape(n, n, k).sum(axis=2, dtype=np.float64)
        diagonal = np.bincount(local, weights=np.diagonal(lower) * np.diagonal(gram), minlength=n)
    else:
        lower *= gram
        if term.runs:
            present, local = channels, np.arange(channels.size)
        else:
            present, local = np.unique(channels, return_inverse=True)
        block = block_sum(lower, local, present.size, term.runs)
        diagonal = np.bincount(local, weights=np.diagonal(lower), minlength=present.size)
    whole = block + block.T
    whole.flat[:: present.size + 1] -= diagonal
    if np.array_equal(present, np.arange(n_channels)):
        return whole
    A = np.zeros((n_channels, n_channels))
    A[np.ix_(present, present)] = whole
    return A


def _coupling(terms: list[_Term], lam_t: list[np.ndarray], n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A = Σ_j α_j Eᵀ(G_j ∘ Λ_jᵀΛ_j)E and β = Σ_j α_j Eᵀ((C_j ∘ Λ_jᵀ)1).

    The data term of L is then Σ_j α_j c0_j − 2βᵀw + wᵀAw. A factored consumer's Λ must be the one its
    latest Λ-step returned, not rescaled since (the driver forms the coupling right after the Λ-step).
    """
    A, beta = None, np.zeros(n_channels)
    for t, lt in zip(terms, lam_t):
        if isinstance(lt, _Outer):
            block = block_sum(lt.outer * t.gram, t.channels, n_channels, t.layout)
            per_column = lt.cross
        elif t.stats.factored:
            latest, s, Q = t.last_step
            if lt is not latest:
                raise ValueError("a factored consumer's coupling needs the Λ of its latest Λ-step.")
            block, per_column = lowrank.coupling(t.stats.F, t.stats.B, s, Q, t.channels, n_channels)
        else:
            block = _hadamard_block_sum(lt, t, n_channels)
            per_column = np.einsum("im,im->i", t.cross, lt, dtype=np.float64)
        block *= t.alpha  # a new array from each branch: the first one is A (0 + x is x)
        A = block if A is None else np.add(A, block, out=A)
        beta += t.alpha * np.bincount(t.channels, weights=per_column, minlength=n_channels)
    return A, beta


# --------------------------------------------------------------------------- Λ-step


def _lambda_step(term: _Term, w: np.ndarray) -> np.ndarray:
    """Λᵀ = (S G S + ε_Λ I)⁻¹ S C, returned as (p, M).

    In the weighted loss consumer j's Λ-terms are α_j[−2tr(ΛSC) + tr(ΛSGSΛᵀ) + ε_Λ,j‖Λ‖²]: the
    weight α_j multiplies the whole bracket and cancels from the normal equations, so the step is
    the unweighted S-form ridge solve with ε_Λ,j (doc §4). Scales below 1e-60 (1e-12 in a float32 step, ``_S_MIN``)
    are treated as 0: that changes L by far less than round-off and keeps subnormal numbers (10× slower LAPACK and
    BLAS) out of the factorisation and the coupling. The columns of channels at s = 0 (most of the pruned ones after
    a few rounds) leave the system: their rows of S G S + ε_Λ I are ε_Λ alone, so the others are solved as a smaller
    system with the same values. Columns the solve has all but dropped leave the factorisation too (:func:`_faint`);
    a consumer with many more outputs than columns returns ΛᵀΛ instead of Λ (:func:`_outer_step`). Factored
    statistics take the sample-space form (:func:`lowrank.lambda_step`; ΛᵀΛ by :func:`lowrank.outer_step` where FᵀF
    is held).
    """
    factored = term.stats.factored
    dtype = np.dtype(np.float64 if factored and term.gram is None else _step_dtype(term.channels.size))
    s = np.where(w >= _S_MIN[dtype], w, 0.0)[term.channels]
    if factored and term.gram is not None:
        outer, cross, factor = lowrank.outer_step(term.stats.F, term.kernel, s, term.eps_lambda, dtype)
        return _Outer(outer, cross, (factor, s), np.ones(s.size))
    if factored:
        lam_t, Q = lowrank.lambda_step(term.stats.F, term.stats.B, s, term.eps_lambda)
        term.last_step = (lam_t, s, Q)
        return lam_t

    active = np.flatnonzero(s)
    if active.size == s.size:
        gram, cross = term.gram, term.cross
        term.active = None
    else:  # rows and columns of s = 0 hold ε_Λ I alone: their Λ rows are 0, the others solve on their own
        gram, cross, s = _active_gram(term, active), term.cross[active], s[active]
        term.active = (active, gram)   # for the coupling of this Λ
    if term.kernel is not None:
        return _outer_step(term, gram, s, active)
    rhs = s.astype(cross.dtype)[:, None] * cross
    faint = _faint(s, gram, term.eps_lambda)
    if faint is None:
        rhs = _ridge_solve(gram, s, rhs, term)
    else:  # first order in the faint columns' scales: the others solve alone, the faint rows follow from them
        strong, faint = np.flatnonzero(~faint), np.flatnonzero(faint)
        solved = _ridge_solve(gram, s[strong], rhs[strong], term, rows=strong)
        scaled = s[strong].astype(solved.dtype)[:, None] * solved
        rhs[faint] -= s[faint].astype(rhs.dtype)[:, None] * (submatrix(gram, faint, strong) @ scaled)
        rhs[faint] /= rhs.dtype.type(term.eps_lambda)
        rhs[strong] = solved
    if s.size == term.channels.size:
        return rhs
    lam_t = np.zeros(term.cross.shape, dtype=rhs.dtype)
    lam_t[active] = rhs
    return lam_t


def _active_gram(term: _Term, active: np.ndarray) -> np.ndarray:
    """G on the ``active`` columns: the latest Λ-step's when they are the same columns (once channels die, most
    rounds keep them), gathered from it when they are a subset of its columns (fewer bytes to read), else from G."""
    if term.active is None:
        return submatrix(term.gram, active, active)
    before, gram = term.active
    if np.array_equal(before, active):
        return gram
    local = np.minimum(np.searchsorted(before, active), before.size - 1)
    if before.size and np.array_equal(before[local], active):
        return submatrix(gram, local, local)
    return submatrix(term.gram, active, active)


def _step_dtype(p: int) -> type:
    """The float type of a Λ-step over ``p`` columns: float32 from ``_SINGLE_FROM`` on."""
    return np.float32 if p >= _SINGLE_FROM else np.float64


def _faint(s: np.ndarray, gram: np.ndarray, eps_lambda: float) -> np.ndarray | None:
    """Columns whose scaled Gram block S_b G_bb S_b is below ``_FAINT`` · ε_Λ in trace (the smallest s_i² G_ii
    first), or None when there are too few to pay for themselves.

    For them (S G S + ε_Λ I)⁻¹ S C is, to a relative ``_FAINT``, the solve over the other columns a alone and
    Λ_b = S_b (C_b − G_ba S_a Λ_a) / ε_Λ (the Schur complement's first order: every term it drops carries
    S_b G S_b / ε_Λ), so they leave the factorisation without changing Λ beyond float32 round-off.
    """
    if s.size <= _FAINT_MIN:   # never enough of them
        return None
    energy = s.astype(np.float64) ** 2 * np.diagonal(gram)
    order = np.argsort(energy, kind="stable")
    count = int(np.searchsorted(np.cumsum(energy[order]), _FAINT * eps_lambda, side="right"))
    if count < max(_FAINT_MIN, s.size // 16) or count == s.size:
        return None
    faint = np.zeros(s.size, dtype=bool)
    faint[order[:count]] = True
    return faint


def _outer_step(term: _Term, gram: np.ndarray, s: np.ndarray, active: np.ndarray) -> _Outer:
    """The Λ-step of a consumer carried as ΛᵀΛ: with H = S G S + ε_Λ I and K = C Cᵀ, Y = H⁻¹ S K gives
    (C ∘ Λᵀ)1 = diag(Y) and ΛᵀΛ = H⁻¹ S K S H⁻¹ = (H⁻¹ S Yᵀ)ᵀ, two solves with p right-hand sides instead of M."""
    p = term.channels.size
    kernel = term.kernel if active.size == p else submatrix(term.kernel, active, active)
    factor, scale = _ridge_factor(gram, s, term), s.astype(gram.dtype)   # w on the simplex: some s > 0
    Y = backend.cho_solve(factor, scale[:, None] * kernel)
    outer_active = backend.cho_solve(factor, scale[:, None] * Y.T).T
    outer, cross = np.zeros((p, p), dtype=gram.dtype), np.zeros(p)
    outer[np.ix_(active, active)] = 0.5 * (outer_active + outer_active.T)
    cross[active] = np.diagonal(Y)
    return _Outer(outer, cross, (factor.copy(), scale, active), np.ones(p))   # the factor lives in scratch space


def _ridge_solve(gram: np.ndarray, s: np.ndarray, rhs: np.ndarray, term: _Term,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """(S G S + ε_Λ I)⁻¹ rhs by Cholesky, the scaled matrix built in the term's scratch buffer (G: the principal
    submatrix of ``gram`` on ``rows`` when given)."""
    if not s.size:
        return rhs
    return backend.cho_solve(_ridge_factor(gram, s, term, rows), rhs, overwrite=True)


def _ridge_factor(gram: np.ndarray, s: np.ndarray, term: _Term, rows: np.ndarray | None = None) -> np.ndarray:
    """Lower Cholesky factor of S G S + ε_Λ I, built in the term's scratch buffer; G is ``gram``, or its principal
    submatrix on ``rows`` gathered straight into the buffer."""
    n = s.size

    def scaled_gram() -> np.ndarray:
        scale = s.astype(gram.dtype)
        H = term.work.reshape(-1)[:n * n].reshape(n, n)
        if rows is None:
            np.multiply(gram, scale[:, None], out=H)
        else:
            submatrix(gram, rows, rows, out=H)
            H *= scale[:, None]
        H *= scale[None, :]
        H.flat[:: n + 1] += term.eps_lambda
        return H

    return cholesky_jittered(scaled_gram)


# --------------------------------------------------------------------------- w-steps


def _rtsafe(fun: Callable, lo: np.ndarray, hi: np.ndarray, x: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Element-wise root of an increasing function on [lo, hi] from ``x``: Newton kept safe by bisection.

    ``fun(x)`` returns (f, f'). Where f has no sign change on [lo, hi] the root is clipped to an end.
    """
    f_lo, f_hi = fun(lo)[0], fun(hi)[0]
    lo, hi = np.where(f_hi <= 0, hi, lo), np.where(f_lo >= 0, lo, hi)
    x = np.clip(x, lo, hi)
    dx_old = hi - lo
    for _ in range(max_iter):
        f, df = fun(x)
        lo, hi = np.where(f <= 0, x, lo), np.where(f >= 0, x, hi)
        step = f / df
        newton = x - step
        xtol = 4.0 * _EPS * (1.0 + np.abs(x))
        finite = np.isfinite(f) & np.isfinite(df)  # an overflowing f' makes the Newton step falsely 0
        converged = (finite & (np.abs(step) <= xtol)) | (hi - lo <= xtol)
        if converged.all():   # every element takes its Newton step
            return np.clip(newton, lo, hi)
        fast = finite & (newton > lo) & (newton < hi) & (np.abs(2.0 * f) <= np.abs(dx_old * df))
        x_new = np.clip(np.where(converged | fast, newton, 0.5 * (lo + hi)), lo, hi)
        dx_old, x = x_new - x, x_new
    return x


def _weights_given_ridge(a: np.ndarray, eps_w: float, start: np.ndarray | None = None) -> np.ndarray:
    """argmin over the simplex of Σ_d a_d / w_d² + ε_w Σ_d w_d log w_d (a ≥ 0, not all 0 when ε_w = 0).

    Stationarity: −2a_d/w_d³ + ε_w(1 + log w_d) + μ = 0. For a given μ each u_d = log w_d has a closed form,
    3(u_d + c) = ω(log(6a_d/ε_w) + 3c) with c = 1 + μ/ε_w and ω the Wright omega function. It loses digits to the
    cancellation of c when μ ≫ ε_w; Newton steps on the stationarity restore them (:func:`_settled_logs`). μ is
    found so that Σ w = 1 by a scalar Newton iteration kept safe by bisection, from what each channel's stationarity
    asks at ``start`` (the current w), weighted by it. Each log w_d stays in [log 1e-300, 0].
    """
    n = a.size
    if eps_w == 0:
        w = np.cbrt(a)
        return w / w.sum()
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_a = np.log(a)
        log6a = log_a + np.log(6.0 / eps_w)

        def logs(mu: float) -> tuple[np.ndarray, np.ndarray]:
            """log w at μ and the stationarity's derivative there."""
            c = 1.0 + mu / eps_w
            seed = scipy.special.wrightomega(log6a + 3.0 * c) / 3.0 - c
            return _settled_logs(log_a, eps_w, mu, np.minimum(np.maximum(seed, _LOG_W_MIN), 0.0))

        # Σw ≥ 1 at μ_lo (the largest a_d's channel alone asks w = 1) and ≤ 1 at μ_hi (every channel asks at most
        # 1/n): 1 − Σw rises from ≤ 0 to ≥ 0 between them
        largest = float(np.maximum.reduce(a))
        lo, hi = 2.0 * largest - eps_w, 2.0 * largest * n**3 + eps_w * (math.log(n) - 1.0)
        mu = 0.5 * (lo + hi)
        if start is not None:   # what each channel's stationarity asks at its w, weighted by it (else the median)
            u = np.log(np.maximum(start, _W_MIN))
            asked = 2.0 * np.exp(log_a - 3.0 * u) - eps_w * (1.0 + u)
            mean = float(np.dot(start, asked)) / float(start.sum())
            mu = min(max(mean if math.isfinite(mean) else float(np.partition(asked, n // 2)[n // 2]), lo), hi)
        moved = hi - lo
        for _ in range(200):
            u, slope = logs(mu)
            w = np.exp(u)
            excess = 1.0 - float(np.add.reduce(w))
            rate = float(np.add.reduce(w / slope))   # d(1 − Σw)/dμ: each log w_d falls by 1/slope_d
            if excess <= 0:
                lo = mu
            if excess >= 0:
                hi = mu
            step = excess / rate
            tol = 4.0 * _EPS * (abs(mu) + eps_w)   # a change of μ moves each log w by at most itself over ε_w
            if abs(step) <= tol or hi - lo <= tol:
                u = logs(min(max(mu - step, lo), hi))[0]
                break
            newton = mu - step
            fast = lo < newton < hi and abs(2.0 * excess) <= abs(moved * rate)
            nxt = newton if fast else 0.5 * (lo + hi)
            moved, mu = nxt - mu, nxt
        w = np.exp(u)
    return w / w.sum()


def _settled_logs(log_a: np.ndarray, eps_w: float, mu: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roots in [log 1e-300, 0] of the stationarities f_d(u) = −2a_d e^(−3u) + ε_w(1 + u) + μ from ``u`` near them,
    and f'_d there. Each f_d is concave and increasing: Newton steps approach its root from below after the first one,
    quadratically (constant |f''/2f'| < 1.5), so once every step is below ``_SETTLED`` the error is a few ulps. A
    channel not settled in ``_NEWTON_STEPS`` steps (a start far below the root, where steps of 1/3 crawl up the
    exponential) is solved by :func:`_rtsafe`."""
    for _ in range(_NEWTON_STEPS):
        f, slope = _stationarity(log_a, eps_w, mu, u)
        new = np.minimum(np.maximum(u - f / slope, _LOG_W_MIN), 0.0)
        moved = np.abs(new - u)
        u = new
        if np.maximum.reduce(moved) <= _SETTLED:
            return u, slope
    rest = np.flatnonzero(moved > _SETTLED)
    u[rest] = _rtsafe(lambda x: _stationarity(log_a[rest], eps_w, mu, x), np.full(rest.size, _LOG_W_MIN),
                      np.zeros(rest.size), u[rest])
    return u, _stationarity(log_a, eps_w, mu, u)[1]


def _stationarity(log_a: np.ndarray, eps_w: float, mu: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f_d(u) = −2a_d e^(−3u) + ε_w(1 + u) + μ and f'_d(u), with e^(−3u) capped at e^700: no overflow, so f/f' stays
    finite (a step of 1/3 where the cap holds, as the exact ratio's limit)."""
    e = np.exp(np.minimum(log_a - 3.0 * u, 700.0))
    return eps_w * u + (eps_w + mu) - 2.0 * e, 6.0 * e + eps_w


def _ridge_objective(a: np.ndarray, w: np.ndarray, eps_w: float) -> float:
    """Σ a_d / w_d² + ε_w Σ w_d log w_d (channels with a_d = 0 contribute no ridge)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ridge = np.add.reduce(np.where(a > 0, a / (w * w), 0.0))
        entropy = np.dot(w, np.where(w > 0, np.log(w), 0.0))
    return float(ridge) + eps_w * float(entropy)


def _w_fixed_step(
    terms: list[_Term], lam_t: list[np.ndarray], w: np.ndarray, A: np.ndarray, beta: np.ndarray, eps_w: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Exact w-step with W = ΛS fixed (doc §4); rescales Λ in place, returns (w, A, β) for the new w and the change of
    L: the data term wᵀAw − 2βᵀw does not change (W does not), the ridge Σ_d a_d / w_d² and the entropy do."""
    n_channels = w.size
    a = np.zeros(n_channels)
    for t, lt in zip(terms, lam_t):
        norms = _row_norms(lt) * w[t.channels] ** 2
        a += t.alpha * t.eps_lambda * np.bincount(t.channels, weights=norms, minlength=n_channels)
    if n_channels == 1 or (eps_w == 0 and not np.any(a > 0)):
        return w, A, beta, 0.0
    w_new = _weights_given_ridge(a, eps_w, start=w)
    change = _ridge_objective(a, w_new, eps_w) - _ridge_objective(a, w, eps_w)
    if change > 0:
        return w, A, beta, 0.0  # never accept a worse point, whatever the round-off
    ratio = np.divide(w, w_new, out=np.zeros_like(w), where=w_new > 0)
    for t, lt in zip(terms, lam_t):
        _scale_rows(lt, ratio[t.channels])
    A = ratio[:, None] * A
    A *= ratio[None, :]
    return w_new, A, ratio * beta, change


def _eg_step(
    w: np.ndarray, A: np.ndarray, beta: np.ndarray, eps_w: float, atol: float, max_inner: int = 100
) -> tuple[np.ndarray, float]:
    """w-step with Λ fixed: exponentiated gradient with backtracking (doc §4); returns w and the change of
    wᵀAw − 2βᵀw + ε_w H(w), which is L's change (Λ is fixed).

    w⁺ ∝ exp((log w − 2η(Aw − β)) / (1 + ηε_w)), η = 1/(2 max A_dd) halved until wᵀAw − 2βᵀw + ε_w H(w)
    does not increase; repeated until it decreases by less than ``atol``. Its iterations are a few microseconds of
    arithmetic each on the channels of a narrow group: numpy's ufuncs and BLAS dot are called directly, without their
    Python wrappers.
    """
    dot, exp, total_of, largest = np.dot, np.exp, np.add.reduce, np.maximum.reduce
    with np.errstate(divide="ignore"):
        z = np.log(w)   # log w up to a constant, which the shift of each candidate to its largest entry removes
    zeros = not w.all()   # channels at w = 0 (log w = −inf) stay there: their terms need 0 log 0 = 0
    Aw = dot(A, w)
    f = first = _objective_given(w, z, Aw, beta, eps_w, zeros)
    diag_max = float(A.diagonal().max())
    eta0 = 0.5 / diag_max if diag_max > 0 else 1.0 / max(eps_w, 1.0)
    for _ in range(max_inner):
        grad = Aw - beta
        eta = eta0
        for _ in range(60):
            candidate_z = (z - 2.0 * eta * grad) / (1.0 + eta * eps_w)
            candidate_z -= largest(candidate_z)
            candidate = exp(candidate_z)
            total = float(total_of(candidate))
            candidate /= total   # its log is candidate_z − log(total)
            A_candidate = dot(A, candidate)
            # _objective_given with log w = candidate_z − log(total), written out: this loop runs ~20 000 times in the
            # orientation classifier's rankings, and the call costs 5 % of it
            entropy = dot(candidate, np.where(candidate > 0, candidate_z, 0.0) if zeros else candidate_z)
            f_candidate = (float(dot(candidate, A_candidate) - 2.0 * dot(beta, candidate))
                           + eps_w * (float(entropy) - math.log(total)))
            if f_candidate <= f:
                break
            eta *= 0.5
        else:
            break
        decrease = f - f_candidate
        w, z, Aw, f = candidate, candidate_z, A_candidate, f_candidate
        if decrease <= atol:
            break
    return w, f - first


def _objective_given(w: np.ndarray, log_w: np.ndarray, Aw: np.ndarray, beta: np.ndarray, eps_w: float,
                     zeros: bool) -> float:
    """:func:`_w_objective` from log w and Aw, which the exponentiated gradient has at hand (0 log 0 = 0; without
    ``zeros`` no log w is −inf, and a w that underflowed to 0 adds 0 times a finite log)."""
    entropy = np.dot(w, np.where(w > 0, log_w, 0.0) if zeros else log_w)
    return float(np.dot(w, Aw) - 2.0 * np.dot(beta, w)) + eps_w * float(entropy)


# --------------------------------------------------------------------------- driver


def fit_entropic(
    problems: list[ConsumerProblem],
    n_channels: int,
    *,
    rho: float = 1.0,
    tau: float = 1e-3,
    eps_lambda: float | None = None,
    eps_w: float | None = None,
    max_iter: int = 200,
    tol: float = 1e-8,
    w_init: np.ndarray | None = None,
    w_step: str = "both",
    extrapolate: float = 0.0,
) -> EntropicFit:
    """Alternating minimisation of the weighted entropic loss (module docstring).

    Each round: Λ-step, then the W-fixed w-step ("w"), the Λ-fixed exponentiated-gradient w-step
    ("lambda"), or both in that order ("both"). The loss is recorded at the start (Λ = 0) and after
    every half-step; it never increases. Stops when a round lowers L by less than
    ``tol·(L + ε_w log D)`` (the loss shifted to be non-negative) or after ``max_iter`` rounds.

    ``extrapolate`` = γ > 0 starts each round after the first ``_PLAIN_ROUNDS`` from w extrapolated along the last
    round's step in log w, w̃ ∝ w·(w / w_prev)^γ (:func:`_extrapolated`), and keeps it only if its Λ-step's loss is
    no higher than the round's start; else that round is a plain one from w (one more Λ-step). The loss still never
    increases. After its first rounds the alternation moves log w along slow, nearly straight paths (a dying
    channel's weight falls geometrically), which the extrapolation walks in fewer rounds to the same optimum; from
    the first round on, it reached other local optima (higher or lower) of this non-convex loss.
    """
    if w_step not in W_STEPS:
        raise ValueError(f"w_step must be one of {W_STEPS}, got {w_step!r}.")
    if n_channels < 1 or max_iter < 1:
        raise ValueError(f"n_channels and max_iter must be >= 1, got {n_channels} and {max_iter}.")
    eps_w = tau if eps_w is None else eps_w
    if rho < 0 or eps_w < 0 or (eps_lambda is not None and eps_lambda < 0):
        raise ValueError("rho, tau, eps_lambda and eps_w must be >= 0.")
    terms = _prepare(problems, n_channels, rho, eps_lambda)
    w = _initial_w(w_init, n_channels)
    lam_t = [np.zeros(t.shape) for t in terms]
    A, beta = np.zeros((n_channels, n_channels)), np.zeros(n_channels)
    history = [_loss(terms, lam_t, w, A, beta, eps_w)]
    floor = eps_w * np.log(n_channels)
    previous = None   # w where the last round's w-steps started from, before any extrapolation
    for n_iter in range(1, max_iter + 1):
        start = history[-1]
        step = None
        if extrapolate > 0 and previous is not None and n_iter > _PLAIN_ROUNDS:
            ahead = _extrapolated(w, previous, extrapolate)
            step = _lambda_round(terms, ahead, n_channels, eps_w)
            if step[-1] > start:
                step = None   # the extrapolation overshot: a plain round from w
        previous = w
        if step is not None:
            w = ahead
        lam_t, A, beta, loss = step if step is not None else _lambda_round(terms, w, n_channels, eps_w)
        history.append(loss)
        if w_step in ("both", "w"):
            w, A, beta, change = _w_fixed_step(terms, lam_t, w, A, beta, eps_w)
            history.append(history[-1] + change)
        if w_step in ("both", "lambda"):
            w, change = _eg_step(w, A, beta, eps_w, atol=tol * max(history[-1] + floor, 0.0))
            history.append(history[-1] + change)
        if start - history[-1] <= tol * max(history[-1] + floor, 0.0):
            break
    return EntropicFit(w=w, lambdas=[_explicit(t, lt).T for t, lt in zip(terms, lam_t)], loss_history=history,
                       n_iter=n_iter)


def _lambda_round(terms: list[_Term], w: np.ndarray, n_channels: int,
                  eps_w: float) -> tuple[list, np.ndarray, np.ndarray, float]:
    """The Λ-step at ``w``, its coupling (A, β) and the loss there."""
    lam_t = [_lambda_step(t, w) for t in terms]
    A, beta = _coupling(terms, lam_t, n_channels)
    return lam_t, A, beta, _loss(terms, lam_t, w, A, beta, eps_w)


def _extrapolated(w: np.ndarray, previous: np.ndarray, gamma: float) -> np.ndarray:
    """w·(w / previous)^γ on the simplex: the step from ``previous`` to ``w`` in log w, continued γ times further.
    Channels at w = 0 stay there."""
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
        log_step = np.where(w > 0, log_w - np.log(np.maximum(previous, np.finfo(float).tiny)), 0.0)
    z = np.where(w > 0, log_w + gamma * log_step, -np.inf)
    ahead = np.exp(z - z.max())
    return ahead / ahead.sum()


# --------------------------------------------------------------------------- estimator


def _as_problems(
    problems: CentredStatistics | list[ConsumerProblem], n_channels: int | None, channel_size: int
) -> tuple[list[ConsumerProblem], int]:
    """Normalise the estimator's input to a problem list and the channel count D."""
    if isinstance(problems, CentredStatistics):
        p = problems.n_features
        n_channels = p // channel_size if n_channels is None else n_channels
        if channel_size < 1 or n_channels * channel_size != p:
            raise ValueError(f"{p} columns do not split into {n_channels} channels of {channel_size} columns.")
        channels = np.repeat(np.arange(n_channels), channel_size)
        return [ConsumerProblem(problems, channels)], n_channels
    problems = list(problems)
    if not problems:
        raise ValueError("At least one consumer problem is needed.")
    if n_channels is None:
        n_channels = 1 + max(int(np.max(pr.channel_of_column, initial=-1)) for pr in problems)
    return problems, n_channels


def _top_k(w: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(w.size, dtype=bool)
    keep[decreasing(w)[:k]] = True
    return keep


class EntropicRegression:
    """Entropic channel selection for one channel group, then an exact re-fit of every consumer.

    Parameters: ``rho`` (sparsity), ``tau`` (temperature), ``theta`` (keep channels with D·w ≥ θ),
    ``delta`` (re-fit ridge), ``max_iter``/``tol`` (solver), raw ``eps_lambda``/``eps_w``
    overrides and ``w_step`` ("both", "lambda", "w"); see :func:`fit_entropic`.

    Learned: ``w_`` (D,), ``keep_`` (D,) bool, ``rho_`` (the ρ used), ``n_iter_``,
    ``loss_history_``, and per consumer ``columns_`` (kept column indices), ``coef_``
    (M_j, |I_j|), ``intercept_`` (M_j,) and ``error_`` (relative re-fit error).
    """

    def __init__(
        self,
        rho: float = 1.0,
        tau: float = 1e-3,
        theta: float = 1e-2,
        delta: float = 1e-6,
        max_iter: int = 200,
        tol: float = 1e-8,
        eps_lambda: float | None = None,
        eps_w: float | None = None,
        w_step: str = "both",
    ):
        self.rho = rho
        self.tau = tau
        self.theta = theta
        self.delta = delta
        self.max_iter = max_iter
        self.tol = tol
        self.eps_lambda = eps_lambda
        self.eps_w = eps_w
        self.w_step = w_step

    def _solve(
        self, problems: list[ConsumerProblem], n_channels: int, rho: float, w_init: np.ndarray | None
    ) -> EntropicFit:
        return fit_entropic(
            problems, n_channels, rho=rho, tau=self.tau, eps_lambda=self.eps_lambda, eps_w=self.eps_w,
            max_iter=self.max_iter, tol=self.tol, w_init=w_init, w_step=self.w_step,
        )

    def _passing(self, w: np.ndarray) -> np.ndarray:
        """Channels with D·w ≥ θ."""
        return w.size * w >= self.theta

    def _bisect(
        self, problems: list[ConsumerProblem], n_channels: int, n_keep: int
    ) -> tuple[EntropicFit, float, np.ndarray]:
        """Bisect log10 ρ in [−4, 3] until exactly n_keep channels pass the threshold (doc §5)."""
        lo, hi = -4.0, 3.0
        warm = None
        best: tuple[tuple[int, bool], EntropicFit, float] | None = None
        for _ in range(14):
            log_rho = 0.5 * (lo + hi)
            fit = self._solve(problems, n_channels, 10.0**log_rho, warm)
            passing = self._passing(fit.w)
            count = int(passing.sum())
            rank = (abs(count - n_keep), count < n_keep)
            if best is None or rank < best[0]:
                best = (rank, fit, 10.0**log_rho)
            if count == n_keep:
                return fit, 10.0**log_rho, passing
            if count > n_keep:
                lo, warm = log_rho, fit.w
            else:
                hi = log_rho
        _, fit, rho = best
        return fit, rho, _top_k(fit.w, n_keep)

    def fit(
        self,
        problems: CentredStatistics | list[ConsumerProblem],
        *,
        n_channels: int | None = None,
        channel_size: int = 1,
        n_keep: int | None = None,
        budget: str = "topk",
    ) -> EntropicRegression:
        """Select channels and re-fit each consumer on them; returns self."""
        problems, n_channels = _as_problems(problems, n_channels, channel_size)
        if budget not in ("topk", "bisect"):
            raise ValueError(f"budget must be 'topk' or 'bisect', got {budget!r}.")
        if n_keep is not None and not 1 <= n_keep <= n_channels:
            raise ValueError(f"n_keep must lie in [1, {n_channels}], got {n_keep}.")
        if n_keep is not None and budget == "bisect":
            fit, rho, keep = self._bisect(problems, n_channels, n_keep)
        else:
            rho = self.rho
            fit = self._solve(problems, n_channels, rho, None)
            keep = _top_k(fit.w, n_keep) if n_keep is not None else self._passing(fit.w)
        if not keep.any():
            keep = _top_k(fit.w, 1)
        self.columns_ = [columns_of(pr.channel_of_column, np.flatnonzero(keep)) for pr in problems]
        refits = [self._refit(pr.stats, cols) for pr, cols in zip(problems, self.columns_)]
        self.w_, self.keep_, self.rho_ = fit.w, keep, rho
        self.n_iter_, self.loss_history_ = fit.n_iter, fit.loss_history
        self.coef_ = [r.coef for r in refits]
        self.intercept_ = [r.intercept for r in refits]
        self.error_ = [r.error for r in refits]
        return self

    def _refit(self, stats: CentredStatistics, columns: np.ndarray) -> Refit:
        """Re-fit on the kept columns; exact least squares (δ = 0) when the consumer keeps every column."""
        return refit(stats, columns, 0.0 if columns.size == stats.n_features else self.delta)
