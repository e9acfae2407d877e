"""Error curves judged on the other fold (onnxprune/solvers/fold_curve.py) and the folds the first pass keeps."""
import importlib

import numpy as np
import pytest

from onnxprune.calibration.collect import ConsumerStats
from onnxprune.solvers import LinearStatistics, error_curve
from onnxprune.solvers.fold_curve import CURVE_FOLD_COLUMNS, fold_error_curve
from onnxprune.solvers.shrinkage import effective_rows_factor


def _centred(X: np.ndarray, Y: np.ndarray):
    return LinearStatistics(X.shape[1], Y.shape[1]).partial_fit(X, Y).centred()


def _prefix_fit_error(X_train, Y_train, X_test, Y_test, columns) -> float:
    """Squared error per test row of the least-squares fit (with intercept) on the train rows."""
    x_mean, y_mean = X_train.mean(axis=0), Y_train.mean(axis=0)
    if columns.size:
        W = np.linalg.lstsq(X_train[:, columns] - x_mean[columns], Y_train - y_mean, rcond=None)[0]
        prediction = y_mean + (X_test[:, columns] - x_mean[columns]) @ W
    else:
        prediction = np.broadcast_to(y_mean, Y_test.shape)
    return float(np.sum((Y_test - prediction) ** 2) / len(Y_test))


def test_fold_curve_is_the_in_sample_error_plus_half_the_measured_optimism():
    rng = np.random.default_rng(0)
    n, channels, k, m = 300, 5, 3, 4
    X = rng.standard_normal((n, channels * k)) + rng.standard_normal(channels * k)
    Y = X[:, :6] @ rng.standard_normal((6, m)) + rng.standard_normal((n, m)) + 1.0
    odd = np.arange(n) % 2 == 1
    channel_of_column = np.repeat(np.arange(channels), k)
    order = np.array([3, 0, 4, 1, 2])
    full = _centred(X, Y)
    raw = error_curve(full, channel_of_column, order, delta=1e-12)
    curve = fold_error_curve((_centred(X[~odd], Y[~odd]), _centred(X[odd], Y[odd])), channel_of_column, order, raw,
                             full.c0, delta=1e-12)
    expected = []
    for size in range(channels + 1):
        columns = np.flatnonzero(np.isin(channel_of_column, order[:size]))
        columns = columns[np.argsort(np.argsort(order)[channel_of_column[columns]], kind="stable")]
        halves = [(~odd, odd), (odd, ~odd)]
        outside = np.mean([_prefix_fit_error(X[a], Y[a], X[b], Y[b], columns) for a, b in halves])
        inside = np.mean([_prefix_fit_error(X[a], Y[a], X[a], Y[a], columns) for a, b in halves])
        expected.append(raw[size] + 0.5 * (outside - inside) / full.c0)
    np.testing.assert_allclose(curve, expected, rtol=1e-8, atol=1e-10)


def test_fold_curve_sees_the_optimism_of_correlated_rows_that_gcv_misses():
    """Each 'image' gives 16 near-copies of one row (neighbouring positions): GCV counts 16x the rows it has."""
    rng = np.random.default_rng(1)
    images, copies, p, m = 400, 16, 60, 3
    W = rng.standard_normal((p, m)) * 0.3

    def rows(count):
        base = rng.standard_normal((count, p))
        noise = rng.standard_normal((count, m))   # one draw per image: its copies share it
        X = np.repeat(base, copies, axis=0) + 0.01 * rng.standard_normal((count * copies, p))
        return X, np.repeat(base @ W + noise, copies, axis=0)

    X, Y = rows(images)
    image = np.repeat(np.arange(images), copies)
    odd = image % 2 == 1
    channel_of_column = np.arange(p)
    order = np.arange(p)
    full = _centred(X, Y)
    raw = error_curve(full, channel_of_column, order)
    gcv = raw * effective_rows_factor(full.n_samples, np.arange(p + 1))
    folds = (_centred(X[~odd], Y[~odd]), _centred(X[odd], Y[odd]))
    curve = fold_error_curve(folds, channel_of_column, order, raw, full.c0)
    X_new, Y_new = rows(2000)
    unseen = _prefix_fit_error(X, Y, X_new, Y_new, np.arange(p)) / full.c0
    assert gcv[-1] < 0.8 * unseen                       # counting rows, GCV promises far too little error
    assert abs(curve[-1] - unseen) < abs(gcv[-1] - unseen)
    assert curve[-1] == pytest.approx(unseen, rel=0.25)


@pytest.mark.parametrize("columns, kept", [(CURVE_FOLD_COLUMNS, True), (CURVE_FOLD_COLUMNS + 1, False)])
def test_layers_with_few_rows_keep_folds_up_to_the_curve_width(columns, kept):
    X, Y = np.zeros((2, 3, columns)), np.zeros((2, 3, 4))   # 3 rows per sample
    assert (ConsumerStats.for_rows(X, Y, 10, CURVE_FOLD_COLUMNS).odd is not None) is kept
    assert ConsumerStats.for_rows(X, Y, 10).odd is not None         # every width: the re-fits of --independent
    assert ConsumerStats.for_rows(X, Y, 10 * columns).odd is None   # enough rows per column: no folds


def test_congruence_gives_the_lower_triangle_of_two_triangular_solves():
    from scipy.linalg import cholesky, solve_triangular

    from onnxprune.solvers.fold_curve import _congruence_lower

    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((80, 40)), rng.standard_normal((60, 40))
    L = cholesky(A.T @ A, lower=True)
    expected = solve_triangular(L, solve_triangular(L, B.T @ B, lower=True).T, lower=True)
    np.testing.assert_allclose(np.tril(_congruence_lower(L, B.T @ B)), np.tril(expected), rtol=1e-10, atol=1e-12)


def test_wide_curves_in_float32_follow_the_float64_ones(monkeypatch):
    """From ``refit.CURVE_SINGLE_FROM`` columns the in-sample and fold curves' factorisations and solves run in
    float32 (sums in float64): each stays within float32 round-off of the float64 one."""
    refit = importlib.import_module("onnxprune.solvers.refit")   # the package exports a function of that name

    rng = np.random.default_rng(4)
    n, channels, k, m = 4000, 200, 3, 5
    X = rng.standard_normal((n, channels * k)) @ (np.eye(channels * k) + 0.05 * rng.standard_normal((channels * k,) * 2))
    Y = X[:, :40] @ rng.standard_normal((40, m)) + rng.standard_normal((n, m))
    odd = np.arange(n) % 2 == 1
    channel_of_column, order = np.repeat(np.arange(channels), k), rng.permutation(channels)
    full, folds = _centred(X, Y), (_centred(X[~odd], Y[~odd]), _centred(X[odd], Y[odd]))
    assert channels * k >= refit.CURVE_SINGLE_FROM

    def curves() -> tuple[np.ndarray, np.ndarray]:
        raw = error_curve(full, channel_of_column, order)
        return raw, fold_error_curve(folds, channel_of_column, order, raw, full.c0)

    single = curves()
    monkeypatch.setattr(refit, "CURVE_SINGLE_FROM", channels * k + 1)
    double = curves()
    for a, b in zip(single, double):
        assert not np.array_equal(a, b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
