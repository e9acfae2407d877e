"""Decide which channels to keep in every group and re-fit each consumer on what remains."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnx

from onnxprune.allocate import GroupCurve, allocate, minimum_cost
from onnxprune.analysis.groups import consumer_columns
from onnxprune.analysis.model import Analysis, ChannelGroup, Consumer
from onnxprune.costs import CostModel
from onnxprune.errors import UsageError
from onnxprune.graph.normalise import initializer_arrays
from onnxprune.solvers import ConsumerProblem, Refit, error_curve, rank_channels, refit
from onnxprune.solvers.shrinkage import effective_rows_factor, prior_error_curve, refit_towards
from onnxprune.calibration.collect import ConsumerStats

METHODS = ("entropic", "l1", "l2", "random", "activation")


@dataclass(frozen=True)
class Target:
    """Keep ``fraction`` (0 < f ≤ 1) of the original's 'flops' (multiply-adds) or 'params'."""

    kind: str
    fraction: float


@dataclass(frozen=True)
class SolverSettings:
    """Ranking method, entropic hyperparameters (ρ, τ, threshold θ), ridge δ of the re-fit, seed."""

    method: str = "entropic"
    rho: float = 1.0
    tau: float = 1e-3
    theta: float = 1e-2
    delta: float | None = None          # None: GCV-chosen ridge towards the original weights
    refit: bool = True
    seed: int = 0


@dataclass
class GroupOutcome:
    """What happened to one channel group."""

    id: int
    name: str
    before: int
    after: int
    error: float | None                 # re-fit error (relative, mean over consumers), None if untouched
    consumers: list[str]
    producers: list[str]
    reasons: list[str] = field(default_factory=list)


@dataclass
class PrunePlan:
    """Kept classes, the re-fitted weights of every consumer that lost inputs, and per-group outcomes."""

    kept: np.ndarray
    refits: dict[str, Refit]
    groups: list[GroupOutcome]


@dataclass
class _Ranked:
    group: ChannelGroup
    scores: np.ndarray
    order: np.ndarray                   # local indices, most important first, frozen first
    curve: np.ndarray


def consumer_weight_matrix(node: onnx.NodeProto, consumer: Consumer, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """The consumer's weight as (M outputs, p input columns) in the unfolded input's column order."""
    w = weights[consumer.weight]
    if consumer.op == "Conv":
        return w.reshape(w.shape[0], -1)
    if consumer.op == "ConvTranspose":  # the equivalent Conv's kernel: transposed, spatially flipped
        return np.flip(w, tuple(range(2, w.ndim))).swapaxes(0, 1).reshape(w.shape[1], -1)
    if consumer.op == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return w if trans_b else w.T
    return w.T


def solve(model: onnx.ModelProto, analysis: Analysis, stats: Mapping[str, ConsumerStats], *,
          target: Target | None, counts, settings: SolverSettings = SolverSettings(), fit_consumers: bool = True,
          progress: Callable[[int], None] | None = None) -> PrunePlan:
    """Rank channels per group, choose the kept set (threshold or global budget) and re-fit consumers.

    ``fit_consumers=False`` leaves the re-fits to a later stage (the error-correcting pass).
    """
    if settings.method not in METHODS:
        raise UsageError(f"unknown method '{settings.method}'; choose one of {', '.join(METHODS)}.")
    if target is None and settings.method != "entropic":
        raise UsageError(f"--method {settings.method} needs a target (--target-flops or --target-params).")
    kept = np.ones(analysis.n_classes, dtype=bool)
    if target is not None and target.fraction >= 1.0:
        return PrunePlan(kept, {}, [_outcome(g, kept, None) for g in analysis.groups])
    ctx = _Context(initializer_arrays(model), {n.name: n for n in model.graph.node}, stats, settings)
    ranked = []
    for g in analysis.groups:
        if g.prunable and all(c.node in stats for c in g.consumers):
            ranked.append(_rank(g, analysis, ctx))
        if progress:
            progress(1)
    if target is None:
        for r in ranked:
            local = r.scores * r.group.size >= settings.theta
            local |= r.group.frozen
            if not local.any():
                local[r.order[0]] = True
            kept[r.group.classes[~local]] = False
    else:
        kept = _allocate(model, analysis, ranked, target, counts)
    refits, errors = _refit_groups(ranked, kept, analysis, ctx) if fit_consumers else ({}, {})
    return PrunePlan(kept, refits if settings.refit else {}, [_outcome(g, kept, errors.get(g.id)) for g in analysis.groups])


@dataclass
class _Context:
    weights: Mapping[str, np.ndarray]
    nodes: Mapping[str, onnx.NodeProto]
    stats: Mapping[str, ConsumerStats]
    settings: SolverSettings


def _refit_groups(ranked: list[_Ranked], kept: np.ndarray, analysis: Analysis,
                  ctx: _Context) -> tuple[dict[str, Refit], dict[int, float]]:
    """Re-fit every consumer that lost input columns; mean relative re-fit error per group.

    Centred statistics are rebuilt one consumer at a time, so only one copy of a Gram matrix is alive.
    """
    refits: dict[str, Refit] = {}
    errors: dict[int, float] = {}
    for r in ranked:
        local_kept = kept[r.group.classes]
        errs = []
        for cons in r.group.consumers:
            channel_of_column = consumer_columns(analysis, r.group, cons)
            cols = np.flatnonzero(local_kept[channel_of_column])
            if len(cols) == len(channel_of_column):
                continue
            prob = ConsumerProblem(ctx.stats[cons.node].full.centred(), channel_of_column)
            if ctx.settings.delta is None:
                w0 = consumer_weight_matrix(ctx.nodes[cons.node], cons, ctx.weights)
                fit, _ = refit_towards(prob.stats, cols, w0[:, cols], ctx.stats[cons.node].folds())
            else:
                fit = refit(prob.stats, cols, ctx.settings.delta)
            errs.append(fit.error)
            refits[cons.node] = fit
        if errs:
            errors[r.group.id] = float(np.mean(errs))
    return refits, errors


def _rank(group: ChannelGroup, analysis: Analysis, ctx: _Context) -> _Ranked:
    stats, weights, nodes, settings = ctx.stats, ctx.weights, ctx.nodes, ctx.settings
    problems = [ConsumerProblem(stats[c.node].full.centred(), consumer_columns(analysis, group, c)) for c in group.consumers]
    mats = [consumer_weight_matrix(nodes[c.node], c, weights) for c in group.consumers]
    scores = rank_channels(settings.method, problems, group.size, weights=mats, seed=settings.seed + group.id,
                           rho=settings.rho, tau=settings.tau)
    # frozen channels first, then by decreasing score (stable for ties)
    order = np.lexsort((-scores, ~group.frozen))
    curve = np.zeros(group.size + 1)
    for prob, w0 in zip(problems, mats):
        # best of the two ends of the shrinkage path: the exact re-fit's in-sample error inflated by GCV
        # for the columns it fits (honest when rows are few), and the original weights with a new bias
        per_channel = np.bincount(prob.channel_of_column, minlength=group.size)
        columns = np.concatenate([[0], np.cumsum(per_channel[order])])
        raw = error_curve(prob.stats, prob.channel_of_column, order, settings.delta or 1e-6)
        with np.errstate(invalid="ignore"):
            refit_estimate = np.nan_to_num(raw * effective_rows_factor(prob.stats.n_samples, columns), nan=np.inf)
        curve += np.minimum(refit_estimate, prior_error_curve(prob.stats, prob.channel_of_column, order, w0))
    return _Ranked(group, scores, order, curve / len(problems))


def _allocate(model, analysis: Analysis, ranked: list[_Ranked], target: Target, counts) -> np.ndarray:
    cost = CostModel(model, analysis, counts, target.kind)
    curves = [GroupCurve(r.group.classes[r.order], r.curve, max(int(r.group.frozen.sum()), 1)) for r in ranked]
    return allocate(curves, cost, target.fraction * cost.before, analysis.n_classes)


def _outcome(g: ChannelGroup, kept: np.ndarray, error: float | None) -> GroupOutcome:
    return GroupOutcome(g.id, g.name, g.size, int(kept[g.classes].sum()), error,
                        [c.node for c in g.consumers], list(g.producers), list(g.reasons))


def check_target(model, analysis: Analysis, target: Target, counts) -> None:
    """Raise UsageError before any calibration when the target is below what the prunable groups allow."""
    cost = CostModel(model, analysis, counts, target.kind)
    curves = [GroupCurve(g.classes[np.lexsort((np.arange(g.size), ~g.frozen))], np.zeros(g.size + 1),
                         max(int(g.frozen.sum()), 1))
              for g in analysis.groups if g.prunable]
    floor = minimum_cost(curves, cost, analysis.n_classes)
    if floor > target.fraction * cost.before:
        raise UsageError(
            f"--target-{target.kind} {target.fraction:g} cannot be reached: the prunable groups allow at best "
            f"{floor / cost.before:.3f} of the original {target.kind}.",
            note="run 'onnxprune analyze' to see which channels are frozen and why")
