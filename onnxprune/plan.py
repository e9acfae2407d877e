"""Decide which channels to keep in every group and re-fit each consumer on what remains."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import onnx

from onnxprune import __version__
from onnxprune.allocate import Budgets, GroupCurve, allocate, minimum_cost
from onnxprune.analysis.groups import consumer_columns
from onnxprune.analysis.model import Analysis, ChannelGroup, Consumer
from onnxprune.analysis.propagate import attr
from onnxprune.costs import CostModel
from onnxprune.depth import removable_groups
from onnxprune.errors import UsageError
from onnxprune.executor import Executor, PoolExecutor
from onnxprune.graph.normalise import initializer_arrays
from onnxprune.latency import LatencyCost, LatencyTable
from onnxprune.residual import (landing_gains, near_output_consumers, output_consumers, rectified_sums,
                                residual_landings)
from onnxprune.solvers import ConsumerProblem, Refit, error_curve, rank_channels, refit
from onnxprune.solvers.fold_curve import CURVE_FOLD_COLUMNS, fold_error_curve
from onnxprune.solvers.shrinkage import effective_rows_factor, prior_error_curve, refit_towards
from onnxprune.solvers.ties import settled
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
    # a residual block's error counts gain**power (gain = c0/E(sum)); None: ``rectified_power`` where a ReLU rectifies
    # the sum, 1 where the stream stays linear (onnxprune/residual.py)
    residual_power: float | None = None
    rectified_power: float = 2.0        # compress makes it LATENCY_RECTIFIED_POWER against a latency budget
    output_weight: float = 2.0          # error weight of the consumers nothing linear follows (the classifier)
    wide_head_weight: float = 32.0      # that weight instead for such a consumer with >= WIDE_HEAD outputs
    # error weight of the consumers only such last consumers read (one re-fit from the outputs); None: 1 here,
    # resolved by compress from what the outputs are (:func:`near_output_default`)
    near_output_weight: float | None = None
    # shift passes per error-correcting stage that fit a layer followed by ReLU/Clip to what it passes (rectified.py)
    activation_passes: int = 1


DENSE_OUTPUTS = ("dense", "yolo")   # output kinds (fidelity_kinds.Judge.kind) whose layer before the last weighs more
LINEAR_POWER = 1.0            # the residual power of a sum no ReLU rectifies
LATENCY_RECTIFIED_POWER = 3.0   # that of a rectified sum against a latency budget (:func:`latency_default`)


def latency_default(settings: SolverSettings) -> SolverSettings:
    """``settings`` for a run against a latency budget: a rectified residual sum's power ``LATENCY_RECTIFIED_POWER``
    (a branch that adds little to its sum weighs less, so it goes whole sooner, which the budget pays most for).

    ResNet-56 at ``--target-latency 0.5 --latency-batch 64`` (README's CIFAR calibration, seeds 0 / 1): top-1
    78.55 / 78.82 % against 77.79–78.20 / 78.11 % at power 2; ResNet-20 73.80 % against 73.88 %; sums without a
    ReLU after them (EfficientNet-Lite0, YOLOv8, PP-OCR) keep power 1."""
    return replace(settings, rectified_power=LATENCY_RECTIFIED_POWER)   # a given --residual-power still rules


def near_output_default(settings: SolverSettings, output_kind: str) -> SolverSettings:
    """``settings`` with ``near_output_weight`` chosen where it is None: ``output_weight`` for dense maps and
    detections, 1 for class scores, sequences and other outputs.

    At half the multiply-adds the PP-OCRv3 detector then keeps 23 of the 24 channels its head's 3×3 conv hands to
    the first ConvTranspose instead of 10 (text-map IoU 0.914–0.919 → 0.921–0.922 over three calibration draws;
    YOLOv8n layout boxes F1 0.861 → 0.865, PP-OCRv5 detector IoU 0.952 → 0.955); on classifiers it moved the
    CIFAR tutorial CNN by −1.0 to +1.2 points and the MNIST CNN by −0.6, on the PP-OCRv5 recogniser and
    EfficientNet-Lite0 nothing."""
    if settings.near_output_weight is not None:
        return settings
    return replace(settings, near_output_weight=settings.output_weight if output_kind in DENSE_OUTPUTS else 1.0)


@dataclass(frozen=True)
class LatencyBudget:
    """Keep at most ``fraction`` of the original's latency, as ``table`` predicts it."""

    fraction: float
    table: LatencyTable


@dataclass(frozen=True)
class AllocationSettings:
    """Constraints on the global allocation: keep at least ``min_keep`` (a share) of every group's
    channels, keep multiples of ``round_to`` channels in every group whose size is one, and (optionally)
    a latency budget that must hold besides the FLOPs or parameter target. Unless ``depth`` is False a residual
    branch may also be removed whole (``onnxprune/depth.py``), whatever ``min_keep`` says of thinning it.
    ``reserved``: (kind, amount) pairs of multiply-adds ('flops') or parameters ('params') that a rewrite after
    the allocation adds (``onnxprune/rewrite/layout.py``), which the budgets keep room for."""

    min_keep: float = 0.0
    round_to: int | None = None         # None: compress picks from the provider (compress.backend_counts); else 1
    allow_below: bool = False           # with round_to N, any count below N is allowed too
    whole_blocks: frozenset[int] = frozenset()   # ids of groups that keep multiples of N even so (grouped_conv_groups)
    latency: LatencyBudget | None = None
    depth: bool | None = None
    reserved: tuple[tuple[str, float], ...] = ()

    def reserve(self, kind: str) -> float:
        """What ``reserved`` keeps back of a ``kind`` budget (0 for none)."""
        return dict(self.reserved).get(kind, 0.0)

    def unit(self, group: ChannelGroup) -> int:
        """The group's channel step: ``round_to`` where its size is a multiple of it, else 1."""
        step = self.round_to or 1
        return step if step > 1 and group.size % step == 0 else 1

    def below(self, group: ChannelGroup) -> int:
        """Up to how many kept channels the group may keep any count (``allow_below``): its step, or 0 for a group
        of ``whole_blocks``."""
        step = self.unit(group)
        return step if self.allow_below and step > 1 and group.id not in self.whole_blocks else 0

    def rounded(self, group: ChannelGroup, count: int) -> int:
        """``count`` rounded up to what the group may keep (a multiple of its step, or any count below it where
        :meth:`below` allows)."""
        step = self.unit(group)
        if count < self.below(group):
            return count
        return min(-(-count // step) * step, group.size)

    def curve(self, group: ChannelGroup, order: np.ndarray, errors: np.ndarray,
              removable: Collection[int] = ()) -> GroupCurve:
        """The group's allocation curve under these constraints (``order`` in local indices); ``removable``:
        the ids of the groups whose whole branch may go (:func:`onnxprune.depth.removable_groups`)."""
        floor = group.fewest(self.min_keep)
        return GroupCurve(group.classes[order], errors, self.rounded(group, floor), self.unit(group),
                          self.below(group), bool(removable) and group.id in removable)

    @property
    def removes_branches(self) -> bool:
        """Whether the allocation may remove whole residual branches: ``depth``, by default (None) yes."""
        return self.depth is not False

    def removable(self, model: onnx.ModelProto, analysis: Analysis) -> set[int]:
        """The groups whose whole branch the allocation may remove (none unless :attr:`removes_branches`)."""
        return removable_groups(model, analysis) if self.removes_branches else set()


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

    @property
    def removed(self) -> bool:
        """Whether the group lost every channel: a residual branch removed whole (``onnxprune/depth.py``)."""
        return bool(self.before) and not self.after


@dataclass
class PrunePlan:
    """Kept classes, the re-fitted weights of every consumer that lost inputs, and per-group outcomes."""

    kept: np.ndarray
    refits: dict[str, Refit]
    groups: list[GroupOutcome]


@dataclass
class RankedGroup:
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
          progress: Callable[[int], None] | None = None,
          allocation: AllocationSettings = AllocationSettings(),
          ranked: list[RankedGroup] | None = None) -> PrunePlan:
    """Rank channels per group, choose the kept set (threshold or global budget) and re-fit consumers.

    ``fit_consumers=False`` leaves the re-fits to a later stage (the error-correcting pass);
    ``ranked`` reuses :func:`rank_groups` of the same statistics.
    """
    budgeted = target is not None or allocation.latency is not None
    check_method(settings, budgeted)
    kept = np.ones(analysis.n_classes, dtype=bool)
    if target is not None and target.fraction >= 1.0 and allocation.latency is None:
        return PrunePlan(kept, {}, [_outcome(g, kept, None) for g in analysis.groups])
    if ranked is None:
        ranked = rank_groups(model, analysis, stats, settings, progress)
    if not budgeted:
        for r in ranked:
            local = r.scores * r.group.size >= settings.theta
            local |= r.group.frozen
            if not local.any():
                local[r.order[0]] = True
            kept[r.group.classes[~local]] = False
    else:
        kept = _allocate(model, analysis, ranked, target, counts, allocation)
    if not fit_consumers:
        return PrunePlan(kept, {}, [_outcome(g, kept, None) for g in analysis.groups])
    return refit_kept(model, analysis, stats, settings, ranked, kept)


def output_means(model: onnx.ModelProto, analysis: Analysis, stats: Mapping[str, ConsumerStats],
                 allocation: AllocationSettings) -> dict[str, Refit]:
    """The re-fits with no input column (each its output's mean on the calibration data) of the consumers of
    every group the allocation may remove whole: a removed branch's last layers' errors in the report (the rewrite
    installs nothing for them: the Add passes its shortcut on). Taken before the first pass's statistics are freed."""
    empty = np.zeros(0, dtype=np.intp)
    removable = allocation.removable(model, analysis)
    return {c.node: refit(stats[c.node].full.centred(), empty)
            for g in analysis.groups if g.id in removable for c in g.consumers if c.node in stats}


def refit_kept(model: onnx.ModelProto, analysis: Analysis, stats: Mapping[str, ConsumerStats],
               settings: SolverSettings, ranked: Sequence[RankedGroup], kept: np.ndarray, *,
               weights: Mapping[str, np.ndarray] | None = None) -> PrunePlan:
    """The plan that keeps ``kept``, the consumers of ``ranked``'s groups that lost inputs re-fitted from
    ``stats``; ``weights`` are the model's initializer arrays when a caller re-fits many times."""
    refits, errors = _refit_groups(ranked, kept, analysis, _context(model, stats, settings, weights))
    return PrunePlan(kept, refits if settings.refit else {}, [_outcome(g, kept, errors.get(g.id)) for g in analysis.groups])


def grouped_conv_groups(model: onnx.ModelProto, analysis: Analysis) -> frozenset[int]:
    """Ids of the groups whose channels a grouped (depthwise) convolution reads: onnxruntime runs one in its blocked
    CPU layout only over whole channel blocks, so fewer channels than one block leave that layout (a 32-channel
    group cut to 13 before a depthwise convolution: EfficientNet-Lite0's stem)."""
    grouped = {n.name for n in model.graph.node if n.op_type == "Conv" and int(attr(n, "group", 1)) > 1}
    return frozenset(g.id for g in analysis.groups if grouped.intersection(g.members))


def check_method(settings: SolverSettings, budget: bool) -> None:
    """UsageError for an unknown method, or a ranking-only method without a budget to allocate."""
    if settings.method not in METHODS:
        raise UsageError(f"unknown method '{settings.method}'; choose one of {', '.join(METHODS)}.")
    if not budget and settings.method != "entropic":
        raise UsageError(f"--method {settings.method} needs a target (--target-flops, --target-params or "
                         "--target-fidelity).")


def rank_groups(model: onnx.ModelProto, analysis: Analysis, stats: Mapping[str, ConsumerStats],
                settings: SolverSettings = SolverSettings(),
                progress: Callable[[int], None] | None = None, executor: Executor | None = None) -> list[RankedGroup]:
    """Channel order and error curve of every prunable group with statistics (the target-independent part of
    :func:`solve`, so that several targets can share it).

    Each group is ranked as one task of ``executor`` (default: worker processes of this machine, one BLAS thread
    per core; ``onnxprune/executor.py``) that gets only its consumers' statistics and weights, the widest groups
    first; the results come back in group order."""
    ctx = _context(model, stats, settings)
    gains = _gains(model, analysis, ctx.stats, ctx.settings)
    todo = [(i, g) for i, g in enumerate(analysis.groups)
            if g.prunable and all(c.node in ctx.stats for c in g.consumers)]
    if progress and len(todo) < len(analysis.groups):
        progress(len(analysis.groups) - len(todo))
    jobs = [(i, {c.node: ctx.stats[c.node] for c in g.consumers}, {c.weight: ctx.weights[c.weight] for c in g.consumers},
             {c.node: ctx.nodes[c.node] for c in g.consumers}) for i, g in todo]
    # the largest groups first, so that workers finish together
    first = sorted(range(len(jobs)), key=lambda k: -sum(s.full.n_features ** 3 for s in jobs[k][1].values()))
    results = (executor or PoolExecutor()).map(_rank_task, [jobs[k] for k in first],
                                               context=(analysis, settings, gains),
                                               on_done=(lambda _i, _r: progress(1)) if progress else None)
    by_job = dict(zip(first, results))
    return [RankedGroup(g, *by_job[k]) for k, (_, g) in enumerate(todo)]


def ranking_identity(analysis: Analysis, settings: SolverSettings, backend: str) -> dict:
    """What :func:`rank_groups` makes of given statistics depends on besides them (and the model): the solver
    settings, the backend that factorises, each group's frozen channels and the onnxprune version (a key for cached
    rankings; the target is not part of it)."""
    return {"solver": asdict(settings), "backend": backend, "version": __version__,
            "frozen": [np.flatnonzero(g.frozen).tolist() for g in analysis.groups]}


def _rank_task(context, job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One group's scores, order and error curve (a task of :func:`rank_groups`)."""
    analysis, settings, gains = context
    index, stats, weights, nodes = job
    ranked = _rank(analysis.groups[index], analysis, _Context(weights, nodes, stats, settings), gains)
    return ranked.scores, ranked.order, ranked.curve


WIDE_HEAD = 1000  # outputs from which a last layer counts as a wide class head (ImageNet, CTC characters)


def _gains(model: onnx.ModelProto, analysis: Analysis, stats: Mapping[str, ConsumerStats],
           settings: SolverSettings) -> dict[str, float]:
    """Each consumer's error weight in the allocation: the residual gain**power, times the output weight (the
    wide-head weight for a last layer of at least ``WIDE_HEAD`` outputs: the more classes, the less of its
    relative error the top class survives; PP-OCRv5's recogniser, 18 385 CTC characters, at half its
    multiply-adds: 32 % of its test lines decoded identically at weight 2, 64 % at 8, 88 % at 32). A consumer one
    re-fit from the outputs (read only by last layers) takes ``near_output_weight``."""
    consumers = [c for g in analysis.groups for c in g.consumers]
    rectified = rectified_sums(model, residual_landings(model, analysis, consumers))

    def power(node: str) -> float:
        if settings.residual_power is not None:
            return settings.residual_power
        return settings.rectified_power if node in rectified else LINEAR_POWER

    gains = landing_gains(analysis, {node: s.gain ** power(node) for node, s in stats.items() if s.gain is not None})
    last = output_consumers(model, consumers)
    for node in last:
        wide = node in stats and stats[node].full.n_targets >= WIDE_HEAD
        gains[node] = gains.get(node, 1.0) * (settings.wide_head_weight if wide else settings.output_weight)
    if settings.near_output_weight not in (None, 1.0):
        for node in near_output_consumers(model, consumers, last):
            gains[node] = gains.get(node, 1.0) * settings.near_output_weight
    return gains


def _context(model: onnx.ModelProto, stats: Mapping[str, ConsumerStats], settings: SolverSettings,
             weights: Mapping[str, np.ndarray] | None = None) -> "_Context":
    return _Context(initializer_arrays(model) if weights is None else weights, {n.name: n for n in model.graph.node},
                    stats, settings)


@dataclass
class _Context:
    weights: Mapping[str, np.ndarray]
    nodes: Mapping[str, onnx.NodeProto]
    stats: Mapping[str, ConsumerStats]
    settings: SolverSettings


def _refit_groups(ranked: list[RankedGroup], kept: np.ndarray, analysis: Analysis,
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
            if not len(cols):   # a removed branch's last layer: the error of its mean output, which the re-fits after absorb
                fit = refit(prob.stats, cols)
            elif ctx.settings.delta is None:
                w0 = consumer_weight_matrix(ctx.nodes[cons.node], cons, ctx.weights)
                fit, _ = refit_towards(prob.stats, cols, w0[:, cols], ctx.stats[cons.node].folds())
            else:
                fit = refit(prob.stats, cols, ctx.settings.delta)
            errs.append(fit.error)
            refits[cons.node] = fit
        if errs:
            errors[r.group.id] = float(np.mean(errs))
    return refits, errors


def _rank(group: ChannelGroup, analysis: Analysis, ctx: _Context, gains: Mapping[str, float]) -> RankedGroup:
    """Channel order by score, and the group's error curve: over its consumers, the sum of each one's
    relative error times its weight: 1, or (c0/E(sum))**residual_power for a consumer whose error lands
    in a residual sum, so that each consumer's error is judged against the stream it perturbs.

    Power 1 is the plain ratio; 2 (the default) was measured better on the CIFAR ResNets at 50 % FLOPs
    (ResNet-20 72.5 → 74.0 %, ResNet-56 80.7 % with the stream kept whole), 3 no better than 2.
    A consumer nothing linear follows also counts ``output_weight`` times: no later re-fit absorbs its
    error (the CIFAR tutorial CNN keeps its last conv whole at 2, 59.7 → 60.0 % at 50 % FLOPs); one whose output
    only such last consumers read counts ``near_output_weight`` times (:func:`near_output_default`)."""
    stats, weights, nodes, settings = ctx.stats, ctx.weights, ctx.nodes, ctx.settings
    problems = [ConsumerProblem(stats[c.node].full.centred(), consumer_columns(analysis, group, c)) for c in group.consumers]
    mats = [consumer_weight_matrix(nodes[c.node], c, weights) for c in group.consumers]
    scores = rank_channels(settings.method, problems, group.size, weights=mats, seed=settings.seed + group.id,
                           rho=settings.rho, tau=settings.tau)
    # frozen channels first, then by decreasing score (ties within round-off by index)
    order = np.lexsort((-settled(scores), ~group.frozen))
    curve = np.zeros(group.size + 1)
    for cons, prob, w0 in zip(group.consumers, problems, mats):
        # best of the two ends of the shrinkage path: the exact re-fit's error on unseen rows, and the original
        # weights with a new bias
        best = np.minimum(_refit_curve(prob, stats[cons.node], order, settings.delta or 1e-6),
                          prior_error_curve(prob.stats, prob.channel_of_column, order, w0))
        curve += gains.get(cons.node, 1.0) * best
    return RankedGroup(group, scores, order, curve)


def _refit_curve(prob: ConsumerProblem, stats: ConsumerStats, order: np.ndarray, delta: float) -> np.ndarray:
    """The exact re-fit's relative error on rows it has not seen, keeping the first k channels of ``order``: its
    in-sample error plus the optimism its two folds measure (:func:`fold_error_curve`) where the layer kept them (few
    rows per column, at most ``CURVE_FOLD_COLUMNS`` columns), else inflated by GCV for the columns it fits.

    With few rows per column the rows are not independent (neighbouring positions of a few images), and GCV, which
    counts rows, understated the gap: at half the multiply-adds over seeds 0–2, PP-OCRv3 detector IoU 0.897 → 0.916,
    PP-OCRv5 detector 0.939 → 0.953, the YOLOv8n layout detector F1 0.830 → 0.836, EfficientNet-Lite0 the same."""
    raw = error_curve(prob.stats, prob.channel_of_column, order, delta)
    folds = stats.folds() if not prob.stats.factored and prob.stats.n_features <= CURVE_FOLD_COLUMNS else None
    if folds is not None and not (folds[0].factored or folds[1].factored):
        return fold_error_curve(folds, prob.channel_of_column, order, raw, prob.stats.c0, delta)
    per_channel = np.bincount(prob.channel_of_column, minlength=order.size)
    columns = np.concatenate([[0], np.cumsum(per_channel[order])])
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(raw * effective_rows_factor(prob.stats.n_samples, columns), nan=np.inf)


def _allocate(model, analysis: Analysis, ranked: list[RankedGroup], target: Target | None, counts,
              allocation: AllocationSettings) -> np.ndarray:
    cost, budget = _budget(model, analysis, target, counts, allocation)
    removable = allocation.removable(model, analysis)
    curves = [allocation.curve(r.group, r.order, r.curve, removable) for r in ranked]
    return allocate(curves, cost, budget, analysis.n_classes)


def _budget(model, analysis: Analysis, target: Target | None, counts,
            allocation: AllocationSettings) -> tuple[CostModel | Budgets, float]:
    """The cost the allocation must bring under its budget: the target's, the latency's, or both at once."""
    wanted = _wanted(target, allocation)
    costs = [cost_model(model, analysis, kind, counts, allocation) for kind, _ in wanted]
    budgets = [fraction * cost.before - allocation.reserve(kind) for (kind, fraction), cost in zip(wanted, costs)]
    return (costs[0], budgets[0]) if len(costs) == 1 else (Budgets(costs, budgets), 1.0)


def _wanted(target: Target | None, allocation: AllocationSettings) -> list[tuple[str, float]]:
    """(kind, fraction) of every budget a run must meet: the target's, then the latency's."""
    wanted = [] if target is None else [(target.kind, target.fraction)]
    if allocation.latency is not None:
        wanted.append(("latency", allocation.latency.fraction))
    return wanted


def cost_model(model, analysis: Analysis, kind: str, counts, allocation: AllocationSettings) -> CostModel:
    """The cost of ``kind``: 'flops' or 'params' counted exactly, 'latency' as ``allocation.latency`` predicts it."""
    if kind == "latency":
        return LatencyCost(model, analysis, counts, allocation.latency.table)
    return CostModel(model, analysis, counts, kind)


def _outcome(g: ChannelGroup, kept: np.ndarray, error: float | None) -> GroupOutcome:
    return GroupOutcome(g.id, g.name, g.size, int(kept[g.classes].sum()), error,
                        [c.node for c in g.consumers], list(g.producers), list(g.reasons))


def check_target(model, analysis: Analysis, target: Target | None, counts,
                 allocation: AllocationSettings = AllocationSettings()) -> None:
    """Raise UsageError before any calibration when the target (or the latency budget) is below what the
    prunable groups allow."""
    for kind, fraction in _wanted(target, allocation):
        floor = minimum_fraction(model, analysis, kind, counts, allocation)
        if floor > fraction:
            what = "latency predicted on the provider" if kind == "latency" else kind
            raise UsageError(
                f"--target-{kind} {fraction:g} cannot be reached: the prunable groups allow at best "
                f"{floor:.3f} of the original {what}.",
                note="frozen channels, --min-keep, --round-to and --exclude set this floor; "
                     "'onnxprune analyze' shows what is frozen and why")


def minimum_fraction(model, analysis: Analysis, kind: str, counts,
                     allocation: AllocationSettings = AllocationSettings()) -> float:
    """The smallest share of the original cost ('flops', 'params', or 'latency' as ``allocation.latency``
    predicts it) that the prunable groups can reach."""
    cost = cost_model(model, analysis, kind, counts, allocation)
    removable = allocation.removable(model, analysis)
    curves = [allocation.curve(g, np.lexsort((np.arange(g.size), ~g.frozen)), np.zeros(g.size + 1), removable)
              for g in analysis.groups if g.prunable]
    return (minimum_cost(curves, cost, analysis.n_classes) + allocation.reserve(kind)) / cost.before
