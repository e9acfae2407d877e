"""Re-fit towards the original weights, with the ridge chosen by cross-validation.

With few regression rows per column (a Gemm after Flatten sees one row per sample), an exact
least-squares re-fit interpolates the calibration set and generalises badly. Shrinking towards
the consumer's original weights W0 instead of towards zero solves

    min_W  E‖y − ȳ − W (x_I − x̄_I)‖² + λ ‖W − W0_I‖²
    ⇒ W = W0_I + Δ,  Δᵀ = (G_II + λI)⁻¹ (C_I − G_II W0_Iᵀ)

so λ → ∞ is plain pruning, λ → 0 the exact re-fit, and keeping every column returns W0 exactly
(then C_I = G_II W0ᵀ). λ is relative to the mean eigenvalue tr(G_II)/|I|:
- with two folds of the statistics (kept for layers with few rows per column), it is chosen on a
  log grid (1e-4 … 10, then on in quarter decades up to 1e3 while the validation error still
  falls: the CIFAR tutorial CNN's classifier chose 17.8; from 1 024 kept columns the search starts
  at 10, :func:`_cross_validated`) by 2-fold validation error, computed from the held-out fold's
  statistics (a wide layer, 2 048 kept columns or more, validates λ in float32 on a seeded draw
  of 64 of its outputs: a fifth of VGG-16's error-correcting time otherwise);
- otherwise the rows far outnumber the columns, nothing can overfit, and a tiny ridge (1e-6)
  only guards the Cholesky factorisation.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from onnxprune.solvers import backend
from onnxprune.solvers.lowrank import block_hadamard
from onnxprune.solvers.refit import Refit, RidgeFactor, RidgeSolver, relative_error, residual
from onnxprune.solvers.statistics import CentredStatistics, block_sum, conv_layout

_GRID = tuple(float(rel) for rel in np.logspace(-4, 1, 6))
_STEP, _LARGEST = 10**0.25, 1e3  # past the grid's top, quarter decades while the error still falls
_WIDE, _WIDE_TARGETS = 2048, 64  # from this many kept columns λ is validated in float32 on 64 outputs
_WALK_FROM = 1024  # kept columns from which the λ search starts at the grid's top (:func:`_cross_validated`)
_SMALL = 1e-6
_WHOLE = 8192  # columns up to which (W0ᵀW0) ∘ G is formed whole (512 MB)
_BLOCK_ELEMENTS = 2**24


def refit_towards(stats: CentredStatistics, columns: np.ndarray, prior: np.ndarray,
                  folds: tuple[CentredStatistics, CentredStatistics] | None = None,
                  ridge: float | None = None) -> tuple[Refit, float]:
    """Re-fit on ``columns`` shrunk towards ``prior`` (M, |I|); returns the fit and the chosen λ (relative):
    ``ridge`` when given, else validated on ``folds``, else a small one. Below ``backend.SHARED_BLAS_FROM`` columns
    it runs on one BLAS thread (:func:`backend.blas_threads_for`)."""
    return refit_towards_factored(stats, columns, prior, folds, ridge)[:2]


def refit_towards_factored(stats: CentredStatistics, columns: np.ndarray, prior: np.ndarray,
                           folds: tuple[CentredStatistics, CentredStatistics] | None = None,
                           ridge: float | None = None,
                           reuse: RidgeFactor | None = None) -> tuple[Refit, float, RidgeFactor | None]:
    """:func:`refit_towards`, and the :class:`RidgeFactor` of its fit (None where it factored nothing dense), which
    a re-fit of the same Gram matrix and prior to other targets takes as ``reuse`` (to the same bits)."""
    cols = np.asarray(columns, dtype=np.int64)
    W0 = np.asarray(prior, dtype=np.float64)
    with backend.blas_threads_for(len(cols)):
        rel = ridge if ridge is not None else _cross_validated(folds, cols, W0) if folds is not None else _SMALL
        kept = stats.restricted(cols)
        solver = RidgeSolver(kept, W0, reuse)
        W = solver(rel * _mean_eigenvalue(kept)) if len(cols) else W0
        intercept = stats.y_mean - W @ kept.x_mean
        return Refit(coef=W, intercept=intercept, error=solver.relative_error(W)), float(rel), solver.factor or reuse


def _mean_eigenvalue(stats: CentredStatistics) -> float:
    """tr(G)/p, the unit of the relative ridge."""
    return max(stats.gram_trace() / max(stats.n_features, 1), 1e-30)


def _cross_validated(folds: tuple[CentredStatistics, CentredStatistics], cols: np.ndarray, W0: np.ndarray) -> float:
    """λ (relative) minimising the summed validation error of fitting on one fold and scoring on the other.

    A narrow layer tries the whole grid (its fits are cheap, and its error may dip twice: a 24-column layer of the
    PP-OCRv5 detector), then quarter decades past the top while the largest λ tried is the best. From
    ``_WALK_FROM`` kept columns the search starts at the grid's top (10): up in quarter decades while the largest λ
    is the best, else down the grid while the error falls. Where the error falls and then rises along the grid, as
    a ridge's does, that is the λ of the whole grid, in fewer fits where the layer chooses a large λ (VGG-16's
    error-correcting re-fits: 29 λ tried instead of 57, the same λ in each)."""
    wide = _wide(folds, len(cols))
    targets = _validation_targets(wide, len(cols), W0.shape[0])
    views = [_validation_view(fold, cols, targets if wide else None) for fold in folds]
    error = _validation_error([(views[0], views[1]), (views[1], views[0])],
                              W0[targets].astype(np.float32) if wide else W0)
    scale = folds[0].c0 + folds[1].c0
    walk = len(cols) >= _WALK_FROM
    grid = list(_GRID[-1:] if walk else _GRID)   # ascending λ
    errors = [error(rel) for rel in grid]
    while _largest_best(errors, scale) == len(errors) - 1 and grid[-1] * _STEP <= _LARGEST * (1 + 1e-9):
        grid.append(grid[-1] * _STEP)
        errors.append(error(grid[-1]))
    if walk and _largest_best(errors, scale) == 0:
        for rel in _GRID[-2::-1]:
            grid.insert(0, rel)
            errors.insert(0, error(rel))
            if errors[0] >= errors[1]:
                break
    return grid[_largest_best(errors, scale)]


def _largest_best(errors: list[float], scale: float) -> int:
    """Index of the largest λ whose error ties the minimum within 1e-8·``scale`` (the target energy the errors
    are differences of). Errors that differ only by round-off (LeNet's classifiers fit to 1e-10 of c0) then
    pick the most shrunk, best-conditioned fit instead of a λ chosen by noise, which would differ between
    sharded and single-pass statistics."""
    least = min(errors)
    return max(i for i, e in enumerate(errors) if e <= least + 1e-8 * scale)


def _wide(folds: tuple[CentredStatistics, CentredStatistics], n_columns: int) -> bool:
    """Whether λ is validated the cheap way: at least _WIDE kept columns, and dense statistics in a fold (a fold of
    few rows is held factored, the other may not be: both are then scored on the same outputs)."""
    return n_columns >= _WIDE and not all(fold.factored for fold in folds)


def _validation_targets(wide: bool, n_columns: int, n_targets: int) -> np.ndarray:
    """The outputs λ is validated on: all, or for a wide layer a seeded draw of _WIDE_TARGETS of them."""
    if not wide or n_targets <= _WIDE_TARGETS:
        return np.arange(n_targets)
    return np.sort(np.random.default_rng(n_columns).choice(n_targets, _WIDE_TARGETS, replace=False))


def _validation_view(stats: CentredStatistics, cols: np.ndarray, targets: np.ndarray | None) -> CentredStatistics:
    """The fold's statistics of the kept columns as the validation uses them: for a wide layer (``targets``
    given) the validated outputs only, with c0 = 0 (a constant: λ is an argmin), dense ones in float32."""
    kept = stats.restricted(cols)
    if targets is None:
        return kept
    if kept.factored:
        return replace(kept, B=kept.B[:, targets], c0=0.0, y_mean=stats.y_mean[targets])
    return CentredStatistics(kept.G.astype(np.float32), kept.C[:, targets].astype(np.float32), 0.0, kept.x_mean,
                             stats.y_mean[targets], stats.n_samples)


def _validation_error(pairs: list[tuple[CentredStatistics, CentredStatistics]],
                      W0: np.ndarray) -> Callable[[float], float]:
    """Relative λ ↦ the validation error summed over both ways of training on one fold and scoring the other.

    A float64 fit (from a factored fold) scored on a float32 Gram matrix (a wide layer's dense fold) is scored on
    that matrix cast to float64 once, which numpy's product would otherwise cast again for every λ (VGG-16's
    4 608-column layers: 2.6 s of its error-correcting stage; the same bits)."""
    fits = [(RidgeSolver(train, W0), _mean_eigenvalue(train), _scored_as(test, train, W0), test.x_mean - train.x_mean,
             test.y_mean - train.y_mean) for train, test in pairs]

    def error(rel: float) -> float:
        total = 0.0
        for fit, unit, test, shift_x, shift_y in fits:
            W = fit(rel * unit)
            total += residual(test, W) + float(np.sum((shift_y - W @ shift_x) ** 2))
        return total

    return error


def _scored_as(test: CentredStatistics, train: CentredStatistics, W0: np.ndarray) -> CentredStatistics:
    """``test`` with its Gram matrix in the float type of the fits on ``train`` (towards ``W0``) where that is wider:
    what numpy's product casts it to anyway."""
    if test.factored:
        return test
    fitted = np.result_type(W0, train.F if train.factored else train.G)
    wider = np.result_type(fitted, test.G)
    return test if wider == test.G.dtype else replace(test, G=test.G.astype(wider))


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
    Factored statistics (G = FᵀF, C = FᵀB) give B by :func:`block_hadamard` and a from F∘(BW0).
    """
    D = int(len(order))
    W0 = np.asarray(prior, dtype=np.float64)
    p = len(channel_of_column)
    if stats.factored:
        a = np.bincount(channel_of_column, weights=np.einsum("ti,ti->i", stats.F, stats.B @ W0), minlength=D)
        B = block_hadamard(stats.F, W0.T, channel_of_column, D)
    else:
        a = np.bincount(channel_of_column, weights=np.einsum("im,mi->i", stats.C, W0), minlength=D)
        if p <= _WHOLE:
            B = block_sum((W0.T @ W0) * stats.G, channel_of_column, D, conv_layout(channel_of_column, D))
        else:   # rows of (W0ᵀW0) ∘ G at a time, summed per channel by a 0/1 matrix: no p×p temporaries
            E = np.zeros((p, D))
            E[np.arange(p), channel_of_column] = 1.0
            step = max(1, _BLOCK_ELEMENTS // p)
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
