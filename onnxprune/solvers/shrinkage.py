"""Re-fit towards the original weights, with the ridge chosen by cross-validation.

With few regression rows per column (a Gemm after Flatten sees one row per sample), an exact
least-squares re-fit interpolates the calibration set and generalises badly. Shrinking towards
the consumer's original weights W0 instead of towards zero solves

    min_W  E‖y − ȳ − W (x_I − x̄_I)‖² + λ ‖W − W0_I‖²
    ⇒ W = W0_I + Δ,  Δᵀ = (G_II + λI)⁻¹ (C_I − G_II W0_Iᵀ)

so λ → ∞ is plain pruning, λ → 0 the exact re-fit, and keeping every column returns W0 exactly
(then C_I = G_II W0ᵀ). λ is relative to the mean eigenvalue tr(G_II)/|I|:
- with two folds of the statistics (kept for layers with few rows per column), it is chosen on a
  log grid (1e-4 … 10) by 2-fold validation error, computed from the held-out fold's statistics;
- otherwise the rows far outnumber the columns, nothing can overfit, and a tiny ridge (1e-6)
  only guards the Cholesky factorisation.
"""
from __future__ import annotations

import numpy as np

from onnxprune.solvers.refit import Refit, solve_psd
from onnxprune.solvers.statistics import CentredStatistics

_GRID = np.logspace(-4, 1, 6)
_SMALL = 1e-6
_WHOLE = 8192  # columns up to which (W0ᵀW0) ∘ G is formed whole (512 MB)
_BLOCK_ELEMENTS = 2**24


def refit_towards(stats: CentredStatistics, columns: np.ndarray, prior: np.ndarray,
                  folds: tuple[CentredStatistics, CentredStatistics] | None = None) -> tuple[Refit, float]:
    """Re-fit on ``columns`` shrunk towards ``prior`` (M, |I|); returns the fit and the chosen λ (relative)."""
    cols = np.asarray(columns, dtype=np.int64)
    W0 = np.asarray(prior, dtype=np.float64)
    G = stats.G[np.ix_(cols, cols)]
    Ct = stats.C[cols] - G @ W0.T                        # cross-covariance with the residual target y − W0 x
    rel = _cross_validated(folds, cols, W0) if folds is not None else _SMALL
    lam = rel * max(float(np.trace(G)) / max(len(cols), 1), 1e-30)
    delta = solve_psd(_ridged(G, lam), Ct) if len(cols) else np.zeros((0, W0.shape[0]))
    W = W0 + delta.T
    intercept = stats.y_mean - W @ stats.x_mean[cols]
    return Refit(coef=W, intercept=intercept, error=_relative_error(stats, cols, W)), float(rel)


def _ridged(G: np.ndarray, lam: float) -> np.ndarray:
    """G + λI, in place (G must be a copy the caller owns)."""
    G.flat[:: G.shape[0] + 1] += lam
    return G


def _relative_error(stats: CentredStatistics, cols: np.ndarray, W: np.ndarray) -> float:
    G = stats.G[np.ix_(cols, cols)]
    err = float(stats.c0) - 2.0 * float(np.sum(W * stats.C[cols].T)) + float(np.sum((W @ G) * W))
    return float(max(err, 0.0) / stats.c0) if stats.c0 > 0 else 0.0


def _cross_validated(folds: tuple[CentredStatistics, CentredStatistics], cols: np.ndarray, W0: np.ndarray) -> float:
    """λ (relative) minimising the summed validation error of fitting on one fold and scoring on the other."""
    total = np.zeros(len(_GRID))
    for train, test in (folds, folds[::-1]):
        G_tr = train.G[np.ix_(cols, cols)]
        Ct = train.C[cols] - G_tr @ W0.T
        scale = max(float(np.trace(G_tr)) / max(len(cols), 1), 1e-30)
        G_te = test.G[np.ix_(cols, cols)]
        C_te = test.C[cols]
        shift_x = test.x_mean[cols] - train.x_mean[cols]
        shift_y = test.y_mean - train.y_mean
        for i, rel in enumerate(_GRID):
            W = W0 + solve_psd(_ridged(G_tr.copy(), rel * scale), Ct).T
            err = float(test.c0) - 2.0 * float(np.sum(W * C_te.T)) + float(np.sum((W @ G_te) * W))
            err += float(np.sum((shift_y - W @ shift_x) ** 2))
            total[i] += err
    return float(_GRID[int(np.argmin(total))])


def effective_rows_factor(n_rows: int, n_columns: np.ndarray) -> np.ndarray:
    """GCV inflation 1/(1 − m/n)² of an in-sample error with m fitted columns and n rows (inf once m ≥ n)."""
    ratio = np.asarray(n_columns, dtype=np.float64) / max(n_rows, 1)
    with np.errstate(divide="ignore"):
        return np.where(ratio < 1.0, 1.0 / (1.0 - np.minimum(ratio, 1.0)) ** 2, np.inf)


def prior_error_curve(stats: CentredStatistics, channel_of_column: np.ndarray, order: np.ndarray,
                      prior: np.ndarray) -> np.ndarray:
    """Relative error of keeping the first k channels of ``order`` with the original weights (bias re-fitted).

    The λ → ∞ end of :func:`refit_towards`: it cannot overfit, so it bounds what the shrunk re-fit
    generalises to. With B = Eᵀ((W0ᵀW0) ∘ G)E and a = Eᵀ diag(C W0) per channel, the error of a
    kept set K is c0 − 2 Σ_K a + Σ_{K×K} B; all prefixes follow from cumulative sums in O(D²).
    """
    D = int(len(order))
    W0 = np.asarray(prior, dtype=np.float64)
    E = np.zeros((len(channel_of_column), D))
    E[np.arange(len(channel_of_column)), channel_of_column] = 1.0
    a = E.T @ np.einsum("im,mi->i", stats.C, W0)
    p = len(channel_of_column)
    step = p if p <= _WHOLE else max(1, _BLOCK_ELEMENTS // p)  # rows of (W0ᵀW0) ∘ G at a time: no p×p temporaries
    B = np.zeros((D, D))
    for start in range(0, p, step):
        rows = slice(start, start + step)
        B += E[rows].T @ ((W0[:, rows].T @ W0) * stats.G[rows]) @ E
    a, B = a[order], B[np.ix_(order, order)]
    # quadratic part of prefix k: sum of the leading k×k block of B
    quad = np.concatenate([[0.0], np.cumsum(np.diag(B) + 2.0 * np.array([B[k, :k].sum() for k in range(D)]))])
    lin = np.concatenate([[0.0], np.cumsum(a)])
    c0 = float(stats.c0)
    if c0 <= 0:
        return np.zeros(D + 1)
    return np.clip((c0 - 2.0 * lin + quad) / c0, 0.0, None)
