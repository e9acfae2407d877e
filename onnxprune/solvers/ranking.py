"""Channel scores for a channel group: entropic weights and the usual baselines."""
from __future__ import annotations

import numpy as np

from .entropic import ConsumerProblem, check_channels, fit_entropic

METHODS = ("entropic", "l1", "l2", "random", "activation")
# The entropic ranking's rounds. Where some consumer reads at least ``EXTRAPOLATE_FROM`` columns (a round's Λ-step
# costs: its float32 Cholesky is most of a solve stage), each round after the first few starts from w extrapolated
# half a step further along the last one in log w (:func:`fit_entropic`), and 25 rounds end within 0.1 % of 50 plain
# rounds' loss (lower in most groups), 0.2 % of the pairs at a top-k boundary swapped (the YOLOv8n layout detector's
# 43 groups, EfficientNet-Lite0's 24), in 0.55 of the time. Narrower groups keep 50 plain rounds: they cost little,
# and their rankings stay those of the plain alternation (which extrapolating changed on 6 of the 15 zoo models).
# The ranking settles before the loss does, but not in a few rounds: 30 plain rounds at tol 1e-4 cost 0.8 points of
# top-1 on the CIFAR tutorial CNN against 50.
ROUNDS, EXTRAPOLATED_ROUNDS, EXTRAPOLATION, EXTRAPOLATE_FROM = 50, 25, 0.5, 512


def _per_channel(problems: list[ConsumerProblem], n_channels: int, column_scores: list[np.ndarray]) -> np.ndarray:
    """Sum per-column scores into their channels, over all consumers."""
    total = np.zeros(n_channels)
    for problem, scores in zip(problems, column_scores):
        channels = check_channels(problem.channel_of_column, problem.stats.n_features, n_channels)
        total += np.bincount(channels, weights=scores, minlength=n_channels)
    return total


def _check_weights(problems: list[ConsumerProblem], weights: list[np.ndarray] | None, method: str) -> list[np.ndarray]:
    if weights is None or len(weights) != len(problems):
        raise ValueError(f"Ranking method {method!r} needs one weight matrix per consumer ({len(problems)}).")
    checked = []
    for problem, W in zip(problems, weights):
        W = np.asarray(W, dtype=np.float64)
        expected = (problem.stats.n_targets, problem.stats.n_features)
        if W.shape != expected:
            raise ValueError(f"Consumer weight matrix must have shape {expected} (M, p), got {W.shape}.")
        checked.append(W)
    return checked


def rank_channels(
    method: str,
    problems: list[ConsumerProblem],
    n_channels: int,
    *,
    weights: list[np.ndarray] | None = None,
    seed: int = 0,
    rho: float = 1.0,
    tau: float = 1e-3,
    max_iter: int | None = None,
    extrapolate: float | None = None,
) -> np.ndarray:
    """Score every channel of a group (D,), higher = more important.

    "entropic": w of :func:`fit_entropic` (at most ``max_iter`` rounds, extrapolated by ``extrapolate``; by default
    as ``ROUNDS`` says); "l1"/"l2": norm of the channel's weight columns, summed
    over consumers; "random": seeded uniform; "activation" (Wanda-like): Σ |W[:, col]|·RMS(x_col).
    ``weights[j]`` is consumer j's (M_j, p_j) weight matrix in the column order of its statistics.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown ranking method {method!r}; choose one of {METHODS}.")
    if method == "entropic":
        wide = max(pr.stats.n_features for pr in problems) >= EXTRAPOLATE_FROM
        if extrapolate is None:
            extrapolate = EXTRAPOLATION if wide else 0.0
        if max_iter is None:
            max_iter = EXTRAPOLATED_ROUNDS if extrapolate else ROUNDS
        return fit_entropic(problems, n_channels, rho=rho, tau=tau, max_iter=max_iter, tol=1e-6,
                            extrapolate=extrapolate).w
    if method == "random":
        return np.random.default_rng(seed).random(n_channels)
    weights = _check_weights(problems, weights, method)
    if method == "l1":
        return _per_channel(problems, n_channels, [np.abs(W).sum(axis=0) for W in weights])
    if method == "l2":
        total = np.zeros(n_channels)
        for problem, W in zip(problems, weights):
            squares = _per_channel([problem], n_channels, [np.einsum("mi,mi->i", W, W)])
            total += np.sqrt(squares)
        return total
    rms = [np.sqrt(np.clip(pr.stats.gram_diagonal(), 0.0, None) + pr.stats.x_mean**2) for pr in problems]
    return _per_channel(problems, n_channels, [np.abs(W).sum(axis=0) * r for W, r in zip(weights, rms)])
