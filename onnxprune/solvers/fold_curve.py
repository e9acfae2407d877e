"""Error curves from two folds: what a re-fit on few rows per column makes of rows it has not seen.

A layer that sees fewer than ``FOLD_ROWS_PER_COLUMN`` rows per input column (a 7×7 map of a few hundred images, a
1024² detector from 20 pages) fits its calibration rows much better than it predicts others, and its rows are not
independent (neighbouring positions of one image), so the GCV inflation of the in-sample error, which counts rows,
understates the gap. Its statistics keep an odd fold (the odd samples); here each fold's re-fits of every prefix of a
channel order are judged on the other fold, exactly, from the statistics alone.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from onnxprune.solvers.refit import prefix_columns, prefix_projection, prefix_sums
from onnxprune.solvers.statistics import CentredStatistics, submatrix

CURVE_FOLD_COLUMNS = 2048   # the widest consumer whose error curve comes from its folds (memory and time: ~5 p³)


def _fold_errors(train: CentredStatistics, test: CentredStatistics, perm: np.ndarray, n_cols: np.ndarray,
                 delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared errors per row on ``test`` and on ``train`` of the ridge re-fits on ``train`` that keep the first
    ``n_cols[k]`` columns of ``perm``.

    With L the Cholesky factor of the permuted G_train + λI, every prefix's factor is L's leading block, so with
    Z = L⁻¹C_train the prefix re-fit is W_kᵀ = L_k⁻ᵀZ_k, and its test error c0 − 2tr(W_k C) + tr(W_k G W_kᵀ) (test
    statistics, plus the shift between the two folds' means) takes cumulative sums over Z ∘ L⁻¹C_test and the lower
    triangles of ZZᵀ ∘ L⁻¹G_test L⁻ᵀ: one factorisation and one congruence (:func:`_congruence_lower`) for all
    prefixes, in float32 from ``refit.CURVE_SINGLE_FROM`` columns (the layout detector's fold curves 2.9 → 2.3 s on one
    core, every curve within 3e-7 of float64's)."""
    L, Z = prefix_projection(train, perm, delta * train.gram_trace() / train.n_features)

    def solve(B: np.ndarray) -> np.ndarray:
        return scipy.linalg.solve_triangular(L, B.astype(L.dtype, copy=False), lower=True, check_finite=False)

    P = _congruence_lower(L, submatrix(test.G, perm, perm, out=np.empty((perm.size, perm.size), L.dtype)))
    syrk = scipy.linalg.get_blas_funcs("syrk", (Z,))
    H = syrk(1.0, Z, lower=1) * P   # ZZᵀ ∘ P, lower triangle (syrk leaves the upper one 0)
    quad = prefix_sums(2.0 * H.sum(axis=1, dtype=np.float64) - np.diagonal(H))
    cross = prefix_sums(np.einsum("im,im->i", Z, solve(test.C[perm]), dtype=np.float64))
    # W_k (x̄_test − x̄_train)
    shift = np.cumsum(solve((test.x_mean - train.x_mean)[perm])[:, None] * Z, axis=0, dtype=np.float64)
    dy = test.y_mean - train.y_mean
    means = np.concatenate(([dy @ dy], np.einsum("im,im->i", dy - shift, dy - shift)))
    inside = train.c0 - prefix_sums(np.einsum("im,im->i", Z, Z, dtype=np.float64))
    return (test.c0 - 2.0 * cross + quad + means)[n_cols], inside[n_cols]


def _congruence_lower(L: np.ndarray, G: np.ndarray) -> np.ndarray:
    """L⁻¹GL⁻ᵀ in the lower triangle (the upper one is G's) for a lower triangular L and a symmetric G (which it
    overwrites): LAPACK's sygst, half the work of two triangular solves."""
    sygst = scipy.linalg.get_lapack_funcs("sygst", (G, L))
    P, info = sygst(G.T, L, itype=1, lower=1, overwrite_a=1)   # G.T: the same symmetric matrix in Fortran order
    if info != 0:
        raise np.linalg.LinAlgError(f"sygst failed (info {info}).")
    return P


def fold_error_curve(folds: tuple[CentredStatistics, CentredStatistics], channel_of_column: np.ndarray,
                     order: np.ndarray, in_sample: np.ndarray, c0: float, delta: float = 1e-6) -> np.ndarray:
    """Relative error on unseen rows of the re-fit on all rows that keeps the first k channels of ``order``
    (k = 0..D): ``in_sample`` (its relative in-sample error, :func:`refit.error_curve`) plus its optimism, half the
    gap between the two folds' out-of-fold and in-fold errors (a least-squares fit's optimism goes as columns over
    rows, and each fold has half of them). ``c0`` is the whole split's output energy."""
    even, odd = folds
    perm, n_cols = prefix_columns(np.asarray(channel_of_column, dtype=np.intp), order)
    if c0 <= 0 or perm.size == 0:
        return np.asarray(in_sample, dtype=np.float64)
    (out_even, in_even), (out_odd, in_odd) = (_fold_errors(even, odd, perm, n_cols, delta),
                                              _fold_errors(odd, even, perm, n_cols, delta))
    rows_even, rows_odd = even.n_samples, odd.n_samples
    outside = (rows_odd * out_even + rows_even * out_odd) / (rows_even + rows_odd)   # each weighed by its test rows
    inside = (rows_even * in_even + rows_odd * in_odd) / (rows_even + rows_odd)
    gap = outside - inside
    return np.maximum(in_sample + 0.5 * gap / c0, 0.0)
