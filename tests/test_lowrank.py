"""Statistics kept as rows (T ≤ p/4) and the sample-space solver paths: the same numbers as the dense ones."""
from __future__ import annotations

import numpy as np
import pytest

from onnxprune.solvers import CentredStatistics, ConsumerProblem, LinearStatistics, error_curve, fit_entropic, refit
from onnxprune.solvers import statistics
from onnxprune.solvers.entropic import _coupling, _explicit, _lambda_step, _Outer, _prepare
from onnxprune.solvers.lowrank import block_hadamard
from onnxprune.solvers.ranking import rank_channels
from onnxprune.solvers.shrinkage import prior_error_curve, refit_towards

D, K, M, T = 12, 5, 6, 15  # channels, columns per channel, targets, rows (T ≤ p/4)
P = D * K
CHANNELS = np.repeat(np.arange(D), K)


def _rows(seed: int, n: int = T, p: int = P) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) @ (np.eye(p) + 0.2 * rng.standard_normal((p, p)) / np.sqrt(p)) + 1.5
    Y = X[:, : p // 3] @ rng.standard_normal((p // 3, M)) / np.sqrt(p) + 0.3 * rng.standard_normal((n, M)) - 0.5
    return X, Y


@pytest.fixture(params=["FᵀF held", "sample space only"])
def held(request, monkeypatch) -> bool:
    """Both ways a factored consumer is solved: FᵀF formed once and Λ carried as ΛᵀΛ, or Λ itself (wide)."""
    if request.param == "sample space only":
        monkeypatch.setattr(statistics, "GRAM_FROM_ROWS", 0)
    return request.param == "FᵀF held"


@pytest.fixture(scope="module")
def factored() -> CentredStatistics:
    stats = LinearStatistics(P, M).partial_fit(*_rows(0)).centred()
    assert stats.factored and stats.G is None and stats.F.shape == (T, P)
    return stats


# --------------------------------------------------------------------------- statistics


def test_rows_are_kept_up_to_the_limit_then_folded_exactly():
    X, Y = _rows(1, n=2 * T)
    stats = LinearStatistics(P, M)
    for start in range(0, T, 5):
        stats.partial_fit(X[start:start + 5], Y[start:start + 5])
        assert stats.keeps_rows
    stats.partial_fit(X[T:T + 1], Y[T:T + 1])  # T + 1 > p/4
    assert not stats.keeps_rows and stats.rows_x_ is None
    stats.partial_fit(X[T + 1:], Y[T + 1:])
    dense = stats.centred()
    first = LinearStatistics(P, M).partial_fit(X[:T], Y[:T])
    np.testing.assert_allclose(dense.G, np.cov(X.T, bias=True), atol=1e-12)
    np.testing.assert_allclose(dense.C, (X - X.mean(0)).T @ (Y - Y.mean(0)) / len(X), atol=1e-12)
    assert dense.c0 == pytest.approx(np.sum(Y.var(axis=0)), rel=1e-12)
    small = first.centred()
    np.testing.assert_allclose(small.F.T @ small.F, np.cov(X[:T].T, bias=True), atol=1e-12)
    assert small.c0 == pytest.approx(np.sum(Y[:T].var(axis=0)), rel=1e-12)
    np.testing.assert_allclose(small.x_mean, X[:T].mean(0), rtol=1e-13)


def test_merge_concatenates_rows_and_folds_past_the_limit():
    X, Y = _rows(2, n=4 * T)
    shards = [LinearStatistics(P, M).partial_fit(X[i:i + 10], Y[i:i + 10]) for i in range(0, 4 * T, 10)]
    one = LinearStatistics(P, M) + shards[0]
    assert one.keeps_rows and one.n_samples_seen_ == 10
    np.testing.assert_array_equal(one.rows_x_, X[:10])
    total = shards[0] + shards[1] + shards[2] + shards[3]  # 20 rows after the second shard: folded
    assert not total.keeps_rows
    np.testing.assert_allclose(total.centred().G, np.cov(X[:40].T, bias=True), atol=1e-12)
    rows_into_dense = LinearStatistics(P, M).partial_fit(X[:30], Y[:30]).merge(shards[3])
    dense_into_rows = LinearStatistics(P, M).merge(shards[0]).merge(shards[1] + shards[2] + shards[3])
    for combined in (rows_into_dense, dense_into_rows):
        np.testing.assert_allclose(combined.centred().G, total.centred().G, atol=1e-12)
        np.testing.assert_allclose(combined.centred().C, total.centred().C, atol=1e-12)


def test_subtracting_a_fold_removes_its_rows():
    X, Y = _rows(3)
    full = LinearStatistics(P, M).partial_fit(X, Y)
    odd = LinearStatistics(P, M).partial_fit(X[1::2], Y[1::2])
    even = full - odd
    assert even.keeps_rows and even.n_samples_seen_ == len(X[0::2])
    np.testing.assert_array_equal(even.rows_x_, X[0::2])
    np.testing.assert_allclose(even.sum_x_, X[0::2].sum(0), atol=1e-12)
    dense = LinearStatistics(P, M).partial_fit(*_rows(4, n=4 * T)).merge(full)
    np.testing.assert_allclose((dense - full).centred().G, LinearStatistics(P, M).partial_fit(
        *_rows(4, n=4 * T)).centred().G, atol=1e-12)
    with pytest.raises(ValueError, match="not part of"):
        _ = odd - LinearStatistics(P, M).partial_fit(X[:1] + 1.0, Y[:1])
    with pytest.raises(ValueError, match="more rows"):
        _ = odd - dense


def test_rows_round_trip_through_npz(tmp_path):
    X, Y = _rows(5)
    original = LinearStatistics(P, M).partial_fit(X[:10], Y[:10])
    assert set(original.to_arrays()) == {"T", "sx", "sy", "q", "X", "Y"}
    np.savez(tmp_path / "stats.npz", **original.to_arrays())
    restored = LinearStatistics.from_arrays(dict(np.load(tmp_path / "stats.npz")))
    for key, value in original.to_arrays().items():
        np.testing.assert_array_equal(restored.to_arrays()[key], value)
    restored.partial_fit(X[10:], Y[10:])
    np.testing.assert_array_equal(restored.rows_x_, X)
    with pytest.raises(ValueError, match="must have shape"):
        LinearStatistics.from_arrays({**original.to_arrays(), "Y": Y})


def test_centred_in_place_gives_the_same_factor():
    X, Y = _rows(6)
    a = LinearStatistics(P, M).partial_fit(X, Y).centred()
    b = LinearStatistics(P, M).partial_fit(X, Y).centred_in_place()
    np.testing.assert_array_equal(a.F, b.F)
    np.testing.assert_array_equal(a.B, b.B)


# --------------------------------------------------------------------------- entropic solver


def test_lambda_step_and_coupling_match_dense(factored, held):
    w = np.random.default_rng(7).dirichlet(np.ones(D))
    w[[2, 5]] = [1e-70, 0.0]  # below _S_MIN: treated as 0 in both forms
    terms = {kind: _prepare([ConsumerProblem(st, CHANNELS)], D, 0.3, None)
             for kind, st in (("factored", factored), ("dense", factored.dense()))}
    lam = {kind: [_lambda_step(t, w) for t in ts] for kind, ts in terms.items()}
    dense = lam["dense"][0]
    assert isinstance(lam["factored"][0], _Outer) == held
    if held:
        np.testing.assert_allclose(lam["factored"][0].outer, dense @ dense.T, rtol=1e-8,
                                   atol=1e-10 * np.abs(dense).max() ** 2)
    explicit = _explicit(terms["factored"][0], lam["factored"][0])
    np.testing.assert_allclose(explicit, dense, rtol=1e-8, atol=1e-10 * np.abs(dense).max())
    A, beta = _coupling(terms["factored"], lam["factored"], D)
    A_dense, beta_dense = _coupling(terms["dense"], lam["dense"], D)
    np.testing.assert_allclose(A, A_dense, rtol=1e-8, atol=1e-10 * np.abs(A_dense).max())
    np.testing.assert_allclose(beta, beta_dense, rtol=1e-8, atol=1e-10 * np.abs(beta_dense).max())
    if not held:
        with pytest.raises(ValueError, match="latest"):
            _coupling(terms["factored"], [lam["factored"][0].copy()], D)


@pytest.mark.parametrize("w_step", ["both", "lambda", "w"])
def test_fit_entropic_matches_dense_with_a_second_consumer(factored, held, w_step):
    """One factored and one dense consumer sharing w: the same fit as with both dense."""
    X, Y = _rows(8, n=400, p=D)
    second = LinearStatistics(D, M).partial_fit(X, Y).centred()
    assert not second.factored
    fits = [fit_entropic([ConsumerProblem(st, CHANNELS), ConsumerProblem(second, np.arange(D), 0.5)], D,
                         max_iter=8, w_step=w_step) for st in (factored, factored.dense())]
    np.testing.assert_allclose(fits[0].w, fits[1].w, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fits[0].loss_history, fits[1].loss_history, rtol=1e-9)
    assert np.max(np.diff(fits[0].loss_history)) <= 1e-12 * fits[0].loss_history[0]


# --------------------------------------------------------------------------- re-fits, curves, ranking


@pytest.mark.parametrize("delta", [0.0, 1e-4])
def test_refit_matches_dense(factored, delta):
    cols = np.flatnonzero(np.isin(CHANNELS, [0, 3, 4, 9]))
    for columns in (cols, np.arange(P)):
        fit, ref = refit(factored, columns, delta), refit(factored.dense(), columns, delta)
        np.testing.assert_allclose(fit.coef, ref.coef, rtol=1e-7, atol=1e-9 * np.abs(ref.coef).max())
        np.testing.assert_allclose(fit.intercept, ref.intercept, atol=1e-9)
        assert fit.error == pytest.approx(ref.error, abs=1e-9)


def test_error_curves_match_dense(factored):
    order = np.random.default_rng(9).permutation(D)
    np.testing.assert_allclose(error_curve(factored, CHANNELS, order, 1e-4),
                               error_curve(factored.dense(), CHANNELS, order, 1e-4), atol=1e-9)
    W0 = np.random.default_rng(10).standard_normal((M, P)) / np.sqrt(P)
    np.testing.assert_allclose(prior_error_curve(factored, CHANNELS, order, W0),
                               prior_error_curve(factored.dense(), CHANNELS, order, W0), rtol=1e-9, atol=1e-12)


def test_wide_error_curve_forms_g_where_one_factorisation_is_cheaper(monkeypatch):
    """A column per channel and T > p^(2/3) rows: one (p, p) factorisation instead of p (T, T) ones, same curve."""
    X, Y = _rows(15, n=25, p=100)
    stats = LinearStatistics(100, M).partial_fit(X, Y).centred()
    assert stats.factored
    order = np.random.default_rng(16).permutation(100)
    curve = error_curve(stats, np.arange(100), order, 1e-4)
    monkeypatch.setattr(statistics, "GRAM_FROM_ROWS", 0)  # sample space only
    np.testing.assert_allclose(error_curve(stats, np.arange(100), order, 1e-4), curve, atol=1e-9)
    np.testing.assert_allclose(error_curve(stats.dense(), np.arange(100), order, 1e-4), curve, atol=1e-12)


def test_shrinkage_refit_with_folds_matches_dense():
    X, Y = _rows(11)
    full = LinearStatistics(P, M).partial_fit(X, Y)
    odd = LinearStatistics(P, M).partial_fit(X[1::2], Y[1::2])
    folds = ((full - odd).centred(), odd.centred())
    W0 = np.random.default_rng(12).standard_normal((M, P)) / np.sqrt(P)
    cols = np.flatnonzero(np.isin(CHANNELS, [1, 2, 6, 7, 8, 11]))
    fit, rel = refit_towards(full.centred(), cols, W0[:, cols], folds)
    ref, rel_ref = refit_towards(full.centred().dense(), cols, W0[:, cols], tuple(f.dense() for f in folds))
    assert rel == rel_ref
    np.testing.assert_allclose(fit.coef, ref.coef, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.intercept, ref.intercept, atol=1e-10)
    assert fit.error == pytest.approx(ref.error, rel=1e-8)


def test_activation_ranking_matches_dense(factored):
    W = np.random.default_rng(13).standard_normal((M, P))
    scores = [rank_channels("activation", [ConsumerProblem(st, CHANNELS)], D, weights=[W])
              for st in (factored, factored.dense())]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-12)


@pytest.mark.parametrize("layout", ["blocks", "interleaved", "uneven", "one column each"])
@pytest.mark.parametrize("r", [3, 40])
def test_block_hadamard_matches_dense(layout, r):
    """Both ways (many columns per channel; one) on any column layout, channels without columns included."""
    rng = np.random.default_rng(14)
    channels = {"blocks": CHANNELS, "interleaved": np.tile(np.arange(D), K),
                "uneven": rng.choice([0, 1, 3, 4, 7, 11], size=P), "one column each": rng.permutation(P)}[layout]
    n = P if layout == "one column each" else D
    F, Pm = rng.standard_normal((T, P)), rng.standard_normal((P, r))
    E = np.zeros((P, n))
    E[np.arange(P), channels] = 1.0
    expected = E.T @ ((F.T @ F) * (Pm @ Pm.T)) @ E
    np.testing.assert_allclose(block_hadamard(F, Pm, channels, n), expected, rtol=1e-10, atol=1e-10)
