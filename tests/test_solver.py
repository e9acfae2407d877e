"""Solver checks: streaming statistics, entropic regression (doc §9), re-fit, error curve, ranking."""
from __future__ import annotations

import os

import numpy as np
import pytest

from onnxprune.solvers import (
    CentredStatistics,
    ConsumerProblem,
    EntropicRegression,
    LinearStatistics,
    columns_of,
    error_curve,
    fit_entropic,
    rank_channels,
    refit,
)
from onnxprune.solvers.ties import decreasing

D, K, M, T = 16, 9, 8, 20_000  # channels, 3×3 kernel taps, targets, samples
P = D * K
PLANTED = [1, 4, 9, 13]
CHANNELS = np.repeat(np.arange(D), K)


def _correlated_inputs(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """Correlated, unit-variance, non-zero-mean inputs."""
    mix = np.eye(p) + 0.3 * rng.standard_normal((p, p)) / np.sqrt(p)
    X = rng.standard_normal((n, p)) @ mix + 0.5 * rng.standard_normal((n, 1))
    return X / X.std(axis=0) + rng.uniform(-2.0, 2.0, p)


@pytest.fixture(scope="module")
def planted_data():
    """Doc §9: only channels {1, 4, 9, 13} drive y, noise σ = 0.3; 2 000 extra rows held out."""
    rng = np.random.default_rng(0)
    X = _correlated_inputs(rng, T + 2_000, P)
    cols = columns_of(CHANNELS, PLANTED)
    W = rng.standard_normal((M, cols.size))
    Y = X[:, cols] @ W.T + rng.uniform(-1.0, 1.0, M) + 0.3 * rng.standard_normal((T + 2_000, M))
    return X, Y


@pytest.fixture(scope="module")
def planted(planted_data):
    X, Y = planted_data[0][:T], planted_data[1][:T]
    return X, Y, LinearStatistics(P, M).partial_fit(X, Y).centred()


@pytest.fixture(scope="module")
def planted_fit(planted):
    return EntropicRegression().fit(planted[2], channel_size=K)


def _increase(history: list[float]) -> float:
    """Largest step-to-step increase of a loss history, relative to its first value."""
    h = np.asarray(history)
    return float(np.max(np.diff(h)) / abs(h[0]))


# --------------------------------------------------------------------------- statistics


def test_partial_fit_over_batches_equals_one_batch(planted):
    X, Y, _ = planted
    whole = LinearStatistics(P, M).partial_fit(X, Y)
    batched = LinearStatistics(P, M)
    for start in range(0, T, 3_000):
        batched.partial_fit(X[start : start + 3_000].astype(np.float32), Y[start : start + 3_000])
    assert batched.n_samples_seen_ == T
    a, b = whole.to_arrays(), LinearStatistics(P, M).partial_fit(X.astype(np.float32), Y).to_arrays()
    for key, value in batched.to_arrays().items():
        np.testing.assert_allclose(value, b[key], rtol=1e-10, atol=1e-8, err_msg=key)
        np.testing.assert_allclose(value, a[key], rtol=1e-5, atol=1e-3, err_msg=key)  # float32 inputs


def test_centred_statistics_match_numpy(planted):
    X, Y, stats = planted
    np.testing.assert_allclose(stats.G, np.cov(X.T, bias=True), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(stats.C, (X - X.mean(0)).T @ (Y - Y.mean(0)) / T, rtol=1e-9, atol=1e-11)
    assert stats.c0 == pytest.approx(np.sum(Y.var(axis=0)), rel=1e-10)
    np.testing.assert_allclose(stats.x_mean, X.mean(0), rtol=1e-12)
    assert stats.n_samples == T


def test_merged_shards_equal_the_whole(planted):
    X, Y, stats = planted
    shards = [LinearStatistics(P, M).partial_fit(X[i::3], Y[i::3]) for i in range(3)]
    summed = shards[0] + shards[1] + shards[2]
    merged = LinearStatistics(P, M).merge(shards[0]).merge(shards[1]).merge(shards[2])
    for combined in (summed, merged):
        c = combined.centred()
        np.testing.assert_allclose(c.G, stats.G, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(c.C, stats.C, rtol=1e-9, atol=1e-12)
        assert c.c0 == pytest.approx(stats.c0, rel=1e-12)
    assert shards[0].n_samples_seen_ == len(X[0::3])  # __add__ leaves its operands alone


def test_a_parked_gram_comes_back_bit_for_bit(planted_data):
    import pickle

    X, Y = planted_data[0][:2000], planted_data[1][:2000]
    stats = LinearStatistics(P, M).partial_fit(X, Y)
    gram = stats.gram_.copy()
    stats.park(min_bytes=gram.nbytes + 1)          # below the size: stays
    assert stats._gram_file is None
    stats.park(min_bytes=0)
    path = stats._gram_file
    assert path and os.path.exists(path) and not stats.keeps_rows
    clone = pickle.loads(pickle.dumps(stats))       # another process gets the matrix itself
    assert not os.path.exists(path) and stats._gram_file is None
    np.testing.assert_array_equal(clone.gram_, gram)
    stats.park(min_bytes=0)
    path = stats._gram_file
    assert os.path.exists(path)
    merged = LinearStatistics(P, M).partial_fit(X[:1], Y[:1]).merge(stats)   # read back when used
    assert not os.path.exists(path) and stats._gram_file is None
    np.testing.assert_array_equal(stats.gram_, gram)
    assert merged.n_samples_seen_ == 2001


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_reading_a_parked_gram_leaves_it_to_the_parent(planted_data):
    """The rankings run in forked workers (``executor.py``): one that reads a parked Gram matrix must not remove
    the file the parent reads it back from (``--allocate-by outputs`` re-fits from the same statistics)."""
    X, Y = planted_data[0][:2000], planted_data[1][:2000]
    stats = LinearStatistics(P, M).partial_fit(X, Y)
    gram = stats.gram_.copy()
    stats.park(min_bytes=0)
    path = stats._gram_file
    child = os.fork()
    if child == 0:   # the worker: reads the matrix, exits without the parent's clean-ups
        os._exit(0 if np.array_equal(stats.gram_, gram) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.exists(path)
    np.testing.assert_array_equal(stats.gram_, gram)
    assert not os.path.exists(path)


def test_arrays_round_trip_through_npz(planted, tmp_path):
    X, Y, _ = planted
    original = LinearStatistics(P, M).partial_fit(X[:500], Y[:500])
    np.savez(tmp_path / "stats.npz", **original.to_arrays())
    restored = LinearStatistics.from_arrays(dict(np.load(tmp_path / "stats.npz")))
    assert restored.n_samples_seen_ == 500
    for key, value in original.to_arrays().items():
        np.testing.assert_array_equal(restored.to_arrays()[key], value)
    restored.partial_fit(X[500:1000], Y[500:1000])  # restored statistics keep accumulating
    assert restored.n_samples_seen_ == 1000


@pytest.mark.parametrize(
    "X, Y",
    [
        (np.ones((4, 3)), np.ones((4, 2))),  # wrong feature count
        (np.ones((4, 5)), np.ones((3, 2))),  # row mismatch
        (np.ones(5), np.ones((1, 2))),  # not 2-D
        (np.full((4, 5), np.nan), np.ones((4, 2))),  # not finite
        (np.ones((4, 5)), np.array([[1.0, 2.0]] * 3 + [[np.inf, 0.0]])),  # one target not finite
    ],
)
def test_partial_fit_rejects_bad_batches(X, Y):
    with pytest.raises(ValueError):
        LinearStatistics(5, 2).partial_fit(X, Y)


def test_statistics_errors():
    with pytest.raises(ValueError, match="No samples"):
        LinearStatistics(3, 2).centred()
    with pytest.raises(ValueError):
        LinearStatistics(3, 2).merge(LinearStatistics(4, 2))
    with pytest.raises(ValueError, match="lack keys"):
        LinearStatistics.from_arrays({"G": np.eye(3)})


# --------------------------------------------------------------------------- entropic fit on planted channels


def test_threshold_keeps_exactly_the_planted_channels(planted_fit):
    scaled = D * planted_fit.w_
    assert np.flatnonzero(planted_fit.keep_).tolist() == PLANTED
    assert scaled[PLANTED].min() > 100 * planted_fit.theta  # ≈ 4 each: well above θ = 1e-2
    assert np.delete(scaled, PLANTED).max() < 1e-6 * planted_fit.theta  # the rest at the floor
    assert planted_fit.rho_ == 1.0


@pytest.mark.parametrize("budget", ["topk", "bisect"])
def test_budget_returns_the_planted_channels(planted, budget):
    est = EntropicRegression().fit(planted[2], channel_size=K, n_keep=4, budget=budget)
    assert np.flatnonzero(est.keep_).tolist() == PLANTED
    if budget == "bisect":
        assert np.count_nonzero(D * est.w_ >= est.theta) == 4  # found by the threshold, not the fallback
        assert 1e-4 <= est.rho_ <= 1e3


def test_refit_error_equals_full_least_squares(planted, planted_fit):
    stats = planted[2]
    full = refit(stats, np.arange(P), delta=0.0)
    assert 0.002 < full.error < 0.003  # doc §9: ≈ 0.0025
    error = planted_fit.error_[0]
    assert full.error <= error <= 1.01 * full.error  # 36 of 144 columns lose < 1 % of the fit
    assert planted_fit.coef_[0].shape == (M, 4 * K)
    np.testing.assert_array_equal(planted_fit.columns_[0], columns_of(CHANNELS, PLANTED))


def test_refit_generalises_to_held_out_rows(planted_data, planted_fit):
    X, Y = planted_data[0][T:], planted_data[1][T:]
    pred = X[:, planted_fit.columns_[0]] @ planted_fit.coef_[0].T + planted_fit.intercept_[0]
    held_out = np.sum((pred - Y) ** 2) / np.sum((Y - Y.mean(axis=0)) ** 2)
    assert held_out == pytest.approx(planted_fit.error_[0], rel=0.15)


@pytest.mark.parametrize("w_step", ["both", "lambda", "w"])
def test_loss_never_increases(planted, w_step):
    fit = fit_entropic([ConsumerProblem(planted[2], CHANNELS)], D, w_step=w_step)
    steps_per_round = {"both": 3, "lambda": 2, "w": 2}[w_step]
    assert len(fit.loss_history) == 1 + steps_per_round * fit.n_iter
    assert _increase(fit.loss_history) <= 1e-12
    assert fit.loss_history[-1] < 0.1 * fit.loss_history[0]  # it did fit (ridge and entropy remain)
    assert fit.w.sum() == pytest.approx(1.0) and fit.w.min() >= 0
    assert sorted(np.argsort(-fit.w)[:4]) == PLANTED


@pytest.mark.parametrize("w_step", ["lambda", "both"])
def test_zero_temperature_fixed_point(planted, w_step):
    """At ε_w = 0 the optimum has w_d ∝ ‖W_d‖^(2/3), W = ΛS (doc §3)."""
    fit = fit_entropic([ConsumerProblem(planted[2], CHANNELS)], D, eps_w=0.0, w_step=w_step, tol=1e-14)
    W = fit.lambdas[0] * fit.w[CHANNELS]
    norms = np.sqrt(np.bincount(CHANNELS, weights=np.sum(W**2, axis=0), minlength=D))
    predicted = norms ** (2.0 / 3.0) / np.sum(norms ** (2.0 / 3.0))
    live = D * fit.w > 1e-3
    assert np.flatnonzero(live).tolist() == PLANTED
    np.testing.assert_allclose(fit.w[live], predicted[live], rtol=1e-5)
    assert _increase(fit.loss_history) <= 1e-12


def _stationarity(a: np.ndarray, w: np.ndarray, eps_w: float, live: np.ndarray) -> np.ndarray:
    """μ_d = 2a_d/w_d³ − ε_w(1 + log w_d) of the ``live`` channels, which the W-fixed step makes all equal."""
    log_w = np.log(w[live])
    return 2 * np.exp(np.log(a[live]) - 3 * log_w) - eps_w * (1 + log_w)  # w³ would underflow


@pytest.mark.parametrize("eps_w", [0.0, 1e-4, 1e-3, 1e-2, 1.0])
def test_w_fixed_step_meets_its_stationarity_conditions(eps_w):
    """−2a_d/w_d³ + ε_w(1 + log w_d) = −μ for every channel; 4 live channels, 507 dying over 200 decades."""
    from onnxprune.solvers.entropic import _weights_given_ridge

    rng = np.random.default_rng(0)
    a = 10.0 ** rng.uniform(-300, -100, 512)
    a[:4], a[4:8] = 0.0, 1.2e-8 * rng.uniform(0.9, 1.0, 4)
    a[-1] = 6.126e-143  # bisection visits w = 1e-150, where 6a/w³ overflows while 2a/w³ does not
    w = _weights_given_ridge(a, eps_w)
    assert w.sum() == pytest.approx(1.0, abs=1e-14) and w.min() >= 0
    ridge_driven = (a > 0) & (w > 1e-290)
    mu = _stationarity(a, w, eps_w, ridge_driven)
    assert ridge_driven.sum() == 508
    np.testing.assert_allclose(mu, mu[0], rtol=1e-12)


@pytest.mark.parametrize("eps_w", [1e-14, 1e-10])
def test_w_fixed_step_brackets_the_channels_its_closed_form_misses(eps_w, monkeypatch):
    """Ridges 10¹⁴ times the temperature: c = 1 + μ/ε_w is so large that the closed form's cancellation leaves some
    channels far below their roots, where Newton steps crawl; they are bracketed instead, and every channel still meets
    its stationarity condition, from any start."""
    from onnxprune.solvers import entropic

    bracketed = []
    rtsafe = entropic._rtsafe
    monkeypatch.setattr(entropic, "_rtsafe", lambda fun, lo, *args: bracketed.append(lo.size) or rtsafe(fun, lo, *args))
    rng = np.random.default_rng(1)
    a = 10.0 ** rng.uniform(-30, 8, 64)
    a[:3] = 0.0
    for start in (None, np.full(64, 1 / 64), rng.dirichlet(np.ones(64))):
        w = entropic._weights_given_ridge(a, eps_w, start=start)
        assert w.sum() == pytest.approx(1.0, abs=1e-14) and w.min() >= 0
        mu = _stationarity(a, w, eps_w, (a > 0) & (w > 1e-290))
        np.testing.assert_allclose(mu, mu[0], rtol=1e-12)
    assert bracketed


def test_w_fixed_step_is_exact_far_below_unit_scale():
    """Ridges and temperature near 1e-15 (a τ far below the default): μ is as small, so its search must stop at a
    precision relative to μ and ε_w, not to 1 (stopped at 4ε(1 + |μ|), these stationarities came out up to 87 %
    apart)."""
    from onnxprune.solvers.entropic import _weights_given_ridge

    rng = np.random.default_rng(9)
    a = 10.0 ** rng.uniform(-63, -17, 261)
    for eps_w in (1e-15, 2e-16):
        for start in (None, rng.dirichlet(np.ones(261))):
            w = _weights_given_ridge(a, eps_w, start=start)
            mu = _stationarity(a, w, eps_w, w > 1e-290)
            np.testing.assert_allclose(mu, mu[0], rtol=1e-10)


def test_loss_history_tracks_the_loss_of_each_half_step(planted):
    """The w-steps report L's change instead of recomputing it: each recorded value is L of the current (w, Λ)."""
    from onnxprune.solvers import entropic

    terms = entropic._prepare([ConsumerProblem(planted[2], CHANNELS)], D, 1.0, None)
    w = np.full(D, 1.0 / D)
    for _ in range(4):
        lam_t, A, beta, loss = entropic._lambda_round(terms, w, D, 1e-3)
        w, A, beta, change = entropic._w_fixed_step(terms, lam_t, w, A, beta, 1e-3)
        assert loss + change == pytest.approx(entropic._loss(terms, lam_t, w, A, beta, 1e-3), rel=1e-12)
        before = entropic._loss(terms, lam_t, w, A, beta, 1e-3)
        w, change = entropic._eg_step(w, A, beta, 1e-3, atol=1e-12)
        assert change <= 0
        assert before + change == pytest.approx(entropic._loss(terms, lam_t, w, A, beta, 1e-3), rel=1e-12)


def test_weights_are_invariant_to_units(planted):
    """ρ and τ are dimensionless: rescaling x or y leaves w unchanged (doc §5)."""
    X, Y, stats = planted
    scaled = LinearStatistics(P, M).partial_fit(3.0 * X, 50.0 * Y).centred()
    w = fit_entropic([ConsumerProblem(stats, CHANNELS)], D, max_iter=5).w
    w_scaled = fit_entropic([ConsumerProblem(scaled, CHANNELS)], D, max_iter=5).w
    np.testing.assert_allclose(w_scaled, w, rtol=1e-6, atol=1e-12)


def test_column_layout_does_not_matter(planted):
    """Columns in any order (channels interleaved) give the same w as the contiguous layout."""
    stats = planted[2]
    perm = np.random.default_rng(2).permutation(P)
    shuffled = CentredStatistics(
        stats.G[np.ix_(perm, perm)], stats.C[perm], stats.c0, stats.x_mean[perm], stats.y_mean, stats.n_samples
    )
    w = fit_entropic([ConsumerProblem(stats, CHANNELS)], D, max_iter=5).w
    w_shuffled = fit_entropic([ConsumerProblem(shuffled, CHANNELS[perm])], D, max_iter=5).w
    np.testing.assert_allclose(w_shuffled, w, rtol=1e-8, atol=1e-14)


def test_keep_all_reproduces_layer_output():
    """Every channel kept: the re-fit is exact least squares, reproducing a linear layer to float32 round-off."""
    rng = np.random.default_rng(3)
    X = _correlated_inputs(rng, 5_000, P).astype(np.float32)
    W = rng.standard_normal((M, P)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    Y = X @ W.T + b  # the float32 layer
    stats = LinearStatistics(P, M).partial_fit(X, Y).centred()
    est = EntropicRegression(theta=0.0).fit(stats, channel_size=K)
    assert est.keep_.all()
    pred = X.astype(np.float64) @ est.coef_[0].T + est.intercept_[0]
    assert np.max(np.abs(pred - Y)) <= 8 * np.finfo(np.float32).eps * np.max(np.abs(Y))
    assert est.error_[0] < 1e-10


def test_joint_regression_of_two_consumers(planted):
    """A second consumer reading only channels 0–7 (centre taps, one of them twice) shares w."""
    X, _, stats = planted
    rng = np.random.default_rng(4)
    reads = np.array([0, 1, 2, 3, 4, 5, 6, 7, 4])
    Xb = X[:, reads * K + K // 2]
    Yb = Xb[:, [1, 4]] @ rng.standard_normal((2, 3)) + 0.1 * rng.standard_normal((T, 3))
    second = LinearStatistics(reads.size, 3).partial_fit(Xb, Yb).centred()
    problems = [ConsumerProblem(stats, CHANNELS), ConsumerProblem(second, reads, weight=0.5)]
    est = EntropicRegression().fit(problems)
    assert np.flatnonzero(est.keep_).tolist() == PLANTED
    np.testing.assert_array_equal(est.columns_[1], [1, 4, 8])  # channels 1 and 4, the latter read twice
    assert est.coef_[1].shape == (3, 3)
    assert est.error_[1] < 0.01
    assert _increase(est.loss_history_) <= 1e-12


def test_never_keeps_zero_channels(planted):
    est = EntropicRegression(theta=2 * D).fit(planted[2], channel_size=K)  # nothing can pass D·w ≥ 32
    assert est.keep_.sum() == 1 and est.keep_[np.argmax(est.w_)]


@pytest.mark.parametrize(
    "kwargs",
    [dict(channel_size=7), dict(channel_size=K, n_keep=0), dict(channel_size=K, n_keep=4, budget="greedy")],
)
def test_estimator_rejects_bad_arguments(planted, kwargs):
    with pytest.raises(ValueError):
        EntropicRegression().fit(planted[2], **kwargs)


def test_fit_entropic_rejects_bad_problems(planted):
    stats = planted[2]
    with pytest.raises(ValueError, match="channel_of_column"):
        fit_entropic([ConsumerProblem(stats, CHANNELS[:-1])], D)
    with pytest.raises(ValueError, match="channel_of_column"):
        fit_entropic([ConsumerProblem(stats, CHANNELS + 1)], D)
    with pytest.raises(ValueError, match="w_step"):
        fit_entropic([ConsumerProblem(stats, CHANNELS)], D, w_step="eg")


# --------------------------------------------------------------------------- re-fit and error curve


def test_refit_of_no_columns_predicts_the_mean(planted):
    stats = planted[2]
    empty = refit(stats, np.array([], dtype=int))
    assert empty.coef.shape == (M, 0) and empty.error == 1.0
    np.testing.assert_array_equal(empty.intercept, stats.y_mean)
    constant = CentredStatistics(stats.G, np.zeros((P, M)), 0.0, stats.x_mean, stats.y_mean, T)
    assert refit(constant, np.arange(P)).error == 0.0


def test_error_curve_matches_refit(planted):
    stats = planted[2]
    order = np.random.default_rng(5).permutation(D)
    curve = error_curve(stats, CHANNELS, order, delta=1e-10)
    assert curve.shape == (D + 1,) and curve[0] == 1.0
    assert np.all(np.diff(curve) <= 1e-12)
    for k in (1, 3, 7, 12, D):
        exact = refit(stats, columns_of(CHANNELS, order[:k]), delta=1e-10).error
        assert curve[k] == pytest.approx(exact, abs=1e-8)


def test_error_curve_of_a_partial_consumer(planted):
    """A consumer reading channels 0–7 only: absent channels add no columns."""
    stats = planted[2]
    cols = columns_of(CHANNELS, np.arange(8))
    partial = CentredStatistics(
        stats.G[np.ix_(cols, cols)], stats.C[cols], stats.c0, stats.x_mean[cols], stats.y_mean, T
    )
    order = np.array(PLANTED + [0, 2, 3, 5, 6, 7, 8, 10, 11, 12, 14, 15])
    curve = error_curve(partial, CHANNELS[cols], order, delta=1e-10)
    assert curve[2] < curve[1] < curve[0] == 1.0  # channels 1 and 4 explain part of y
    assert curve[2] == curve[3] == curve[4]  # channels 9 and 13 are not read
    assert curve[-1] == pytest.approx(refit(partial, np.arange(cols.size), delta=1e-10).error, abs=1e-8)


# --------------------------------------------------------------------------- ranking baselines


def test_norm_rankings_follow_planted_norms(planted):
    stats = planted[2]
    rng = np.random.default_rng(6)
    norms = rng.permutation(D) + 1.0
    W = rng.standard_normal((M, P))
    W /= np.sqrt(np.bincount(CHANNELS, weights=np.sum(W**2, 0)))[CHANNELS]  # unit l2 per channel
    W *= norms[CHANNELS]
    problems = [ConsumerProblem(stats, CHANNELS)]
    l2 = rank_channels("l2", problems, D, weights=[W])
    np.testing.assert_allclose(l2, norms)
    l1 = rank_channels("l1", problems, D, weights=[np.sign(W) * norms[CHANNELS]])
    np.testing.assert_array_equal(np.argsort(l1), np.argsort(norms))


def test_activation_ranking_weighs_input_rms(planted):
    stats = planted[2]
    W = np.ones((M, P))
    rms = np.sqrt(np.diag(stats.G) + stats.x_mean**2)
    scores = rank_channels("activation", [ConsumerProblem(stats, CHANNELS)], D, weights=[W])
    np.testing.assert_allclose(scores, M * np.bincount(CHANNELS, weights=rms))


def test_random_ranking_is_reproducible(planted):
    problems = [ConsumerProblem(planted[2], CHANNELS)]
    a = rank_channels("random", problems, D, seed=7)
    np.testing.assert_array_equal(a, rank_channels("random", problems, D, seed=7))
    assert not np.array_equal(a, rank_channels("random", problems, D, seed=8))


def test_entropic_ranking_puts_planted_channels_first(planted):
    scores = rank_channels("entropic", [ConsumerProblem(planted[2], CHANNELS)], D)
    assert sorted(np.argsort(-scores)[:4]) == PLANTED


def test_ranking_errors(planted):
    problems = [ConsumerProblem(planted[2], CHANNELS)]
    with pytest.raises(ValueError, match="Unknown ranking method"):
        rank_channels("taylor", problems, D)
    with pytest.raises(ValueError, match="needs one weight matrix"):
        rank_channels("l1", problems, D)
    with pytest.raises(ValueError, match="shape"):
        rank_channels("l1", problems, D, weights=[np.ones((M, P + 1))])


def _dying_problem(d: int, k: int, m: int, seed: int) -> list[ConsumerProblem]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3_000, d * k)) @ (np.eye(d * k) + 0.1 * rng.standard_normal((d * k, d * k)))
    W = rng.standard_normal((m, d * k)) * np.repeat(np.r_[np.ones(d // 2), 1e-3 * np.ones(d - d // 2)], k)
    stats = LinearStatistics(d * k, m).partial_fit(X, X @ W.T + 0.01 * rng.standard_normal((3_000, m))).centred()
    return [ConsumerProblem(stats, np.repeat(np.arange(d), k))]


def test_faint_columns_leave_the_lambda_step_without_changing_it():
    """Columns whose scaled Gram block is below 1e-9 ε_Λ are solved to first order outside the Cholesky: Λ equals
    the full system's solution (float64, 256 columns, half the channels at w = 1e-10)."""
    from onnxprune.solvers import entropic

    d, k = 64, 4
    problem = _dying_problem(d, k, 5, seed=7)
    term = entropic._prepare(problem, d, rho=1.0, eps_lambda=None)[0]
    rng = np.random.default_rng(1)
    w = np.r_[rng.uniform(0.5, 1.5, d // 2), 1e-10 * rng.uniform(0.5, 1.5, d - d // 2)]
    w /= w.sum()
    s = w[term.channels]
    assert entropic._faint(s, term.gram, term.eps_lambda).sum() == (d - d // 2) * k
    G, C = problem[0].stats.G, problem[0].stats.C
    exact = np.linalg.solve(s[:, None] * G * s[None, :] + term.eps_lambda * np.eye(d * k), s[:, None] * C)
    np.testing.assert_allclose(entropic._lambda_step(term, w), exact, rtol=1e-8, atol=1e-12 * np.abs(exact).max())


@pytest.mark.parametrize("channels, n, alive", [
    (np.repeat(np.arange(6), 4), 6, None),             # a Conv's layout
    (np.repeat(np.arange(6), 4), 6, [0, 2, 5]),        # … with channels at s = 0
    (np.repeat(np.arange(3, 7), 9), 8, None),          # a 3×3 Conv reading part of a group (after a Split)
    (np.repeat(np.arange(3, 7), 9), 8, [4, 6]),
    (np.array([5, 2, 7, 1, 0]), 8, None),              # a column per channel, out of order (a Concat's parts)
    (np.array([5, 2, 7, 1, 0, 3, 4, 6]), 8, [0, 1, 2, 5, 6, 7]),
    (np.array([0, 1, 2, 3, 1, 2, 4, 5]), 6, None),     # channels read twice, apart
    (np.array([0, 1, 2, 3, 1, 2, 4, 5]), 6, [1, 2, 5]),
])
def test_coupling_block_sums_any_column_to_channel_map(channels, n, alive):
    """Eᵀ(G ∘ ΛᵀΛ)E from the lower triangle of ΛᵀΛ equals the product formed whole, whichever channel owns each
    column, with or without the channels at s = 0 left out of the Λ-step."""
    from onnxprune.solvers import entropic

    rng = np.random.default_rng(len(channels))
    p = channels.size
    X = rng.standard_normal((3 * p + 10, p))
    stats = CentredStatistics(G=X.T @ X, C=rng.standard_normal((p, 5)), c0=10.0, x_mean=np.zeros(p),
                              y_mean=np.zeros(5), n_samples=X.shape[0])
    term = entropic._prepare([ConsumerProblem(stats, channels)], n, rho=1.0, eps_lambda=None)[0]
    lt = rng.standard_normal((p, 5))
    if alive is not None:
        active = np.flatnonzero(np.isin(channels, alive))
        lt[np.setdiff1d(np.arange(p), active)] = 0.0
        term.active = (active, stats.G[np.ix_(active, active)])
    E = np.zeros((p, n))
    E[np.arange(p), channels] = 1.0
    np.testing.assert_allclose(entropic._hadamard_block_sum(lt, term, n), E.T @ (stats.G * (lt @ lt.T)) @ E,
                               rtol=1e-12, atol=1e-12 * np.abs(stats.G).max())


def test_lambda_step_reuses_or_narrows_the_last_active_gram():
    """The Gram matrix on the active columns is the last Λ-step's when they are the same, gathered from it when they
    are fewer, and its values are G's either way."""
    from onnxprune.solvers import entropic

    d, k = 8, 3
    problem = _dying_problem(d, k, 4, seed=3)
    term = entropic._prepare(problem, d, rho=1.0, eps_lambda=None)[0]
    G = problem[0].stats.G
    for alive in ([0, 1, 2, 4, 6], [0, 1, 2, 4, 6], [1, 4, 6], [0, 5]):
        w = np.zeros(d)
        w[alive] = 1.0 / len(alive)
        before = term.active
        entropic._lambda_step(term, w)
        active, gram = term.active
        np.testing.assert_array_equal(active, np.flatnonzero(np.isin(term.channels, alive)))
        np.testing.assert_array_equal(gram, G[np.ix_(active, active)])
        if before is not None and np.array_equal(before[0], active):
            assert gram is before[1]


def test_ranking_with_faint_columns_equals_the_full_lambda_steps(monkeypatch):
    """The whole fit with faint columns out of the factorisation gives the full Λ-steps' weights and order (the
    dying channels' weights, 1e-26 of the others and tied there, only to a few per cent)."""
    from onnxprune.solvers import entropic

    problem = _dying_problem(48, 9, 6, seed=2)
    faint, seen = entropic._faint, []
    monkeypatch.setattr(entropic, "_faint", lambda *a: seen.append(faint(*a)) or seen[-1])
    fast = fit_entropic(problem, 48, max_iter=11, tol=1e-13)
    assert sum(f is not None for f in seen) >= 4     # the dying channels left the factorisation for 4+ rounds
    monkeypatch.setattr(entropic, "_FAINT", -1.0)
    full = fit_entropic(problem, 48, max_iter=11, tol=1e-13)
    live = full.w > 1e-9 * full.w.max()
    assert live.sum() == 24
    np.testing.assert_allclose(fast.w[live], full.w[live], rtol=1e-6)
    assert np.array_equal(decreasing(fast.w), decreasing(full.w))


def test_float32_steps_leave_channels_below_their_floor_out_without_changing_the_ranking(monkeypatch):
    """A float32 Λ-step (576 columns) treats scales below 1e-12 as 0: those channels' rows of Λ are exactly 0 and
    no entry is subnormal (BLAS runs those 10× slower). The dying channels pass through that range during the fit,
    and the weights of the channels that live and the whole order are those of the float64 floor (1e-60)."""
    from onnxprune.solvers import entropic

    d, k = 64, 9
    problem = _dying_problem(d, k, 6, seed=2)
    term = entropic._prepare(problem, d, rho=1.0, eps_lambda=None)[0]
    w = np.r_[np.full(d // 2, 1.0), np.full(d - d // 2, 1e-20)]
    lam_t = entropic._lambda_step(term, w / w.sum())
    assert lam_t.dtype == np.float32
    assert not lam_t[term.channels >= d // 2].any()
    assert np.abs(lam_t[lam_t != 0]).min() >= np.finfo(np.float32).tiny

    step, scales = entropic._lambda_step, []
    monkeypatch.setattr(entropic, "_lambda_step", lambda t, w: scales.append(w.copy()) or step(t, w))
    floored = fit_entropic(problem, d, max_iter=25, tol=1e-13, extrapolate=0.5)
    assert any(((s >= 1e-60) & (s < 1e-12)).any() for s in scales)
    monkeypatch.setattr(entropic, "_S_MIN", {np.dtype(np.float32): 1e-60, np.dtype(np.float64): 1e-60})
    unfloored = fit_entropic(problem, d, max_iter=25, tol=1e-13, extrapolate=0.5)
    live = unfloored.w > 1e-9 * unfloored.w.max()
    assert live.sum() == d // 2
    np.testing.assert_allclose(floored.w[live], unfloored.w[live], rtol=1e-5)
    assert np.array_equal(decreasing(floored.w), decreasing(unfloored.w))


def test_head_with_many_outputs_carries_lambda_as_its_outer_product(monkeypatch):
    """A consumer with ≥ 4× more outputs than columns (a CTC or class head) runs its Λ-steps on ΛᵀΛ (p × p);
    weights, loss and the Λ formed at the end equal the explicit (p × M) Λ-steps'."""
    from onnxprune.solvers import entropic

    rng = np.random.default_rng(4)
    d, k, m = 12, 2, 300
    X = rng.standard_normal((2_000, d * k))
    W = rng.standard_normal((m, d * k)) * np.repeat(rng.uniform(0.05, 2.0, d), k)
    stats = LinearStatistics(d * k, m).partial_fit(X, X @ W.T + 0.3 * rng.standard_normal((2_000, m))).centred()
    problem = [ConsumerProblem(stats, np.repeat(np.arange(d), k))]
    assert entropic._prepare(problem, d, rho=1.0, eps_lambda=None)[0].kernel is not None
    outer = fit_entropic(problem, d, max_iter=30, tol=1e-10)
    monkeypatch.setattr(entropic, "_OUTER_FROM", 10**9)
    explicit = fit_entropic(problem, d, max_iter=30, tol=1e-10)
    assert outer.n_iter == explicit.n_iter and _increase(outer.loss_history) <= 1e-12
    np.testing.assert_allclose(outer.w, explicit.w, rtol=1e-8)
    np.testing.assert_allclose(outer.loss_history, explicit.loss_history, rtol=1e-10)
    lam = explicit.lambdas[0]
    np.testing.assert_allclose(outer.lambdas[0], lam, rtol=1e-7, atol=1e-10 * np.abs(lam).max())


def test_wide_consumer_ranks_in_float32_like_float64(monkeypatch):
    """From _SINGLE_FROM columns the Λ-step runs in float32; the ranking must match the float64 one."""
    from onnxprune.solvers import entropic

    rng = np.random.default_rng(3)
    d, k, m = 64, 32, 6                                   # 2 048 columns: the float32 path
    channels = np.repeat(np.arange(d), k)
    X = rng.standard_normal((4_000, d * k)) @ (np.eye(d * k) + 0.05 * rng.standard_normal((d * k, d * k)))
    W = rng.standard_normal((m, d * k)) * np.repeat(rng.uniform(0.1, 2.0, d), k)
    stats = LinearStatistics(d * k, m).partial_fit(X, X @ W.T + 0.1 * rng.standard_normal((4_000, m))).centred()
    problem = [ConsumerProblem(stats, channels)]
    single = fit_entropic(problem, d, max_iter=15)
    monkeypatch.setattr(entropic, "_SINGLE_FROM", 10**9)
    double = fit_entropic(problem, d, max_iter=15)
    assert single.lambdas[0].dtype == np.float32 and double.lambdas[0].dtype == np.float64
    assert _increase(single.loss_history) <= 1e-6
    np.testing.assert_allclose(single.w, double.w, rtol=1e-3, atol=1e-6)
    assert np.array_equal(np.argsort(-single.w)[: d // 2], np.argsort(-double.w)[: d // 2])


def test_wide_layer_validates_the_ridge_like_the_full_float64_validation(monkeypatch):
    """From 2 048 kept columns λ is validated in float32 on 64 of the outputs; it must pick the same λ."""
    from onnxprune.solvers import shrinkage

    rng = np.random.default_rng(5)
    p, m, n = 2048, 96, 3_000
    X = rng.standard_normal((2 * n, p)) @ (np.eye(p) + 0.05 * rng.standard_normal((p, p)))
    W0 = rng.standard_normal((m, p)) / np.sqrt(p)
    Y = X @ (W0 + 0.3 * rng.standard_normal((m, p)) / np.sqrt(p)).T + rng.standard_normal((2 * n, m))
    folds = tuple(LinearStatistics(p, m).partial_fit(X[i::2], Y[i::2]).centred() for i in (0, 1))
    cols = np.arange(p)
    reduced = shrinkage._cross_validated(folds, cols, W0)
    monkeypatch.setattr(shrinkage, "_WIDE", 10**9)
    full = shrinkage._cross_validated(folds, cols, W0)
    assert reduced == full


def test_wide_layer_with_one_fold_of_few_rows_validates_both_folds_on_the_same_outputs(monkeypatch):
    """A fold with few rows is held factored while the other is dense (VGG-16's 2×2 maps at 512 samples, CPU
    counts): both are scored on the same draw of outputs, and the λ chosen is the full float64 validation's."""
    from onnxprune.solvers import shrinkage

    monkeypatch.setattr(shrinkage, "_WIDE", 32)
    rng = np.random.default_rng(6)
    p, m = 64, 96                                        # more outputs than the 64 a wide layer validates on
    X = rng.standard_normal((112, p))
    W0 = rng.standard_normal((m, p)) / np.sqrt(p)
    Y = X @ (W0 + 0.3 * rng.standard_normal((m, p)) / np.sqrt(p)).T + rng.standard_normal((112, m))
    dense = LinearStatistics(p, m).partial_fit(X[:100], Y[:100]).centred()
    few = LinearStatistics(p, m).partial_fit(X[100:], Y[100:]).centred()   # 12 rows ≤ p/4: kept as rows
    assert few.factored and not dense.factored
    cols = np.arange(48)
    for folds in ((dense, few), (few, dense)):
        chosen = shrinkage._cross_validated(folds, cols, W0[:, cols])
        with monkeypatch.context() as full:
            full.setattr(shrinkage, "_WIDE", 10**9)
            assert chosen == shrinkage._cross_validated(folds, cols, W0[:, cols])
    fit, _ = shrinkage.refit_towards(dense, cols, W0[:, cols], (dense, few))
    assert fit.coef.shape == (m, cols.size) and np.isfinite(fit.coef).all()

def test_rescaling_a_float32_outer_form_keeps_a_dead_channel_at_zero():
    """The W-fixed w-step rescales Λ by w_old/w_new; a channel with zero weights may go to w = 1e-300, a ratio past
    float32 (EfficientNet-Lite0's class head from 6 samples): its rows of ΛᵀΛ stay 0, the others scale exactly."""
    import warnings

    from onnxprune.solvers import entropic

    rng = np.random.default_rng(7)
    lam_t = rng.standard_normal((4, 3)).astype(np.float32)
    lam_t[2] = 0.0
    outer = entropic._Outer(lam_t @ lam_t.T, np.ones(4), (), np.ones(4))
    ratio = np.array([2.0, 0.5, 1e300, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entropic._scale_rows(outer, ratio)
    scaled = np.where(ratio < 1e38, ratio, 0.0)[:, None] * lam_t
    expected = scaled @ scaled.T
    np.testing.assert_allclose(outer.outer, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert outer.outer.dtype == np.float32 and not outer.outer[2].any() and not outer.outer[:, 2].any()


def _graded_problem(d: int, k: int, m: int, ratio: float, seed: int) -> list[ConsumerProblem]:
    """Channel d drives the targets with weight ratio**d: no clear cut, so the plain rounds converge slowly."""
    rng = np.random.default_rng(seed)
    p = d * k
    X = rng.standard_normal((4_000, p)) @ (np.eye(p) + 0.3 * rng.standard_normal((p, p)) / np.sqrt(p))
    W = rng.standard_normal((m, p)) * np.repeat(ratio ** np.arange(d), k)
    Y = X @ W.T + 0.3 * rng.standard_normal((4_000, m))
    return [ConsumerProblem(LinearStatistics(p, m).partial_fit(X, Y).centred(), np.repeat(np.arange(d), k))]


def test_extrapolation_continues_the_last_step_in_log_w():
    from onnxprune.solvers.entropic import _extrapolated

    previous, w = np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.5, 0.3, 0.2, 0.0])
    ahead = _extrapolated(w, previous, 0.5)
    expected = w * (w / previous) ** 0.5
    np.testing.assert_allclose(ahead, expected / expected.sum(), rtol=1e-14)
    assert ahead[3] == 0.0     # a channel at w = 0 stays there
    np.testing.assert_allclose(_extrapolated(w, previous, 0.0), w, rtol=1e-14)


def test_extrapolated_fit_reaches_the_plain_fits_optimum_in_fewer_rounds():
    """Started after the first rounds, the extrapolation walks the plain alternation's path: the same loss and channel
    order at convergence, in about half the rounds; the loss never increases."""
    problem = _graded_problem(32, 9, 8, ratio=0.9, seed=0)
    plain = fit_entropic(problem, 32, max_iter=400, tol=1e-10)
    fast = fit_entropic(problem, 32, max_iter=400, tol=1e-10, extrapolate=0.5)
    assert fast.n_iter <= 0.7 * plain.n_iter
    assert fast.loss_history[-1] == pytest.approx(plain.loss_history[-1], rel=1e-9)
    assert _increase(fast.loss_history) <= 1e-12
    live = plain.w > 1e-3 / 32
    assert np.array_equal(decreasing(fast.w)[: live.sum()], decreasing(plain.w)[: live.sum()])


def test_an_extrapolation_that_raises_the_loss_is_dropped(planted, monkeypatch):
    """A candidate whose Λ-step loses to the round's start is not taken: with every candidate thrown far off (all
    weight on a channel nothing reads), the fit is the plain one, step for step."""
    from onnxprune.solvers import entropic

    problem = [ConsumerProblem(planted[2], CHANNELS)]
    plain = fit_entropic(problem, D, max_iter=12)
    off = np.full(D, 1e-6)
    off[0] = 1.0
    monkeypatch.setattr(entropic, "_extrapolated", lambda w, previous, gamma: off / off.sum())
    dropped = fit_entropic(problem, D, max_iter=12, extrapolate=0.5)
    np.testing.assert_array_equal(dropped.w, plain.w)
    np.testing.assert_array_equal(dropped.loss_history, plain.loss_history)


def test_ranking_extrapolates_only_groups_with_a_wide_consumer(planted, monkeypatch):
    """Narrow groups keep the plain rounds (their rankings those of the alternation); a group with a consumer of
    512+ columns, where the rounds cost, takes fewer, extrapolated ones."""
    from onnxprune.solvers import ranking

    calls = []
    monkeypatch.setattr(ranking, "fit_entropic", lambda *a, **k: calls.append(k) or fit_entropic(*a, **k))
    narrow = [ConsumerProblem(planted[2], CHANNELS)]
    rank_channels("entropic", narrow, D)
    wide = _graded_problem(64, 9, 4, ratio=0.95, seed=1)
    rank_channels("entropic", narrow + [ConsumerProblem(wide[0].stats, np.repeat(np.arange(D), 36))], D)
    assert [(c["max_iter"], c["extrapolate"]) for c in calls] == [(ranking.ROUNDS, 0.0),
                                                                   (ranking.EXTRAPOLATED_ROUNDS, ranking.EXTRAPOLATION)]


def test_submatrix_gathers_by_row_blocks_into_a_buffer(monkeypatch):
    """``submatrix`` equals ``M[np.ix_(rows, columns)]`` whatever the block of rows it gathers at a time, into a
    given buffer or a new array."""
    from onnxprune.solvers import statistics

    rng = np.random.default_rng(11)
    M = rng.standard_normal((40, 30)).astype(np.float32)
    rows, columns = rng.permutation(40)[:17], np.sort(rng.permutation(30)[:12])
    expected = M[np.ix_(rows, columns)]
    for elements in (1, 60, 10**6):                      # one row, two rows, every row at a time
        monkeypatch.setattr(statistics, "_GATHER_ELEMENTS", elements)
        assert np.array_equal(statistics.submatrix(M, rows, columns), expected)
        buffer = np.full((17, 12), np.nan, dtype=np.float32)
        assert statistics.submatrix(M, rows, columns, out=buffer) is buffer
        assert np.array_equal(buffer, expected)


@pytest.mark.parametrize("rank", [6, 3])
def test_solve_psd_factoring_in_place_matches_a_copy_and_falls_back_on_singular(rank):
    """Factored in place with a ``rebuild`` (the re-fits' one buffer for every λ), the solve is that of a copy; a
    singular matrix (rank 3 of 6) is rebuilt for the eigh pseudo-inverse instead of reading the spoilt factor."""
    from onnxprune.solvers.refit import solve_psd

    rng = np.random.default_rng(rank)
    F = rng.standard_normal((rank, 6))
    H0 = F.T @ F + (1e-3 * np.eye(6) if rank == 6 else 0.0)
    B = rng.standard_normal((6, 2))
    buffer = np.empty_like(H0)

    def rebuild() -> np.ndarray:
        np.copyto(buffer, H0)
        return buffer

    np.testing.assert_allclose(solve_psd(rebuild(), B, rebuild=rebuild), solve_psd(H0.copy(), B), rtol=1e-12, atol=1e-12)
    if rank < 6:
        np.testing.assert_allclose(solve_psd(rebuild(), B, rebuild=rebuild), np.linalg.pinv(H0) @ B, atol=1e-8)
