"""Predicted latency of a pruned model on an execution provider, from per-layer times measured beforehand.

Multiply-adds are a poor proxy for time on real backends: on a CPU with AVX-512, onnxruntime computes
convolutions in blocks of 16 channels (NCHWc), and a layer whose activations are large is bound by memory
traffic rather than arithmetic. So the latency budget is priced with measured times: the prunable groups
are split in two colours so that a layer's input and output channels mostly fall in different ones, each
colour is thinned alone (every group of it keeps 75 %, 50 %, 25 % or the fewest allowed of its channels),
and each copy is profiled on the provider (:mod:`onnxprune.bench.profile`). Each Conv/Gemm/MatMul gets a
factor curve per weight axis, and every other kernel that writes (or re-orders) a tensor whose channels pruning
thins gets one over the share of that tensor's channels kept: element-wise ops, resizing and re-orders of the
blocked layout were 42 % of the PP-OCRv3 detector's kernel time on the CPU, and they shrink with the channels.
A pruned model's latency is predicted as the sum of those times (original time × the product of the axes'
factors) plus everything else as measured on the original, plus the session's own time per run (wall clock minus
the profiled kernels), which no pruning removes. The prediction is
checked after the rewrite: :func:`check_latency` times the pruned graph against the original, wall clock, in
interleaved rounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Optional, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, ChannelGroup
from onnxprune.bench.profile import KernelTimes, kernel_times
from onnxprune.bench.providers import ProviderSpec, open_session
from onnxprune.costs import CostModel
from onnxprune.metrics import ModelCounts, count_model

# shares of every group's channels in the thinned copies; 0 keeps the fewest allowed (one channel, or the frozen
# ones), so that a count far below a block, which still costs the block's padding, is measured, not interpolated
FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.0)
ROUNDS = 3  # every copy is profiled once per round; a layer's time is its median over the rounds
ROUND_SECONDS = 0.25  # wall-clock timing: the least time each model runs per round


@dataclass(frozen=True)
class LatencyTarget:
    """``--target-latency``: keep at most ``fraction`` of the original's latency on the calibration provider,
    measured at ``batch`` samples per run with ``threads`` intra-op threads (None: onnxruntime's default)."""

    fraction: float
    batch: int = 1
    threads: Optional[int] = None
    runs: int = 10


def _curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(shares ascending, factors) through (1, 1); timing noise must not make a thinner layer look slower."""
    by_share = {1.0: 1.0}
    for share, factor in points:
        by_share.setdefault(round(share, 9), factor)
    shares = np.array(sorted(by_share))
    factors = np.array([by_share[x] for x in shares])
    return shares, np.minimum.accumulate(factors[::-1])[::-1]


@dataclass(frozen=True)
class LayerCurve:
    """One layer's time: ``ms`` on the original, times a factor for each weight axis that lost channels.

    ``axes``: axis -> (shares ascending, factors), measured with that axis thinned alone; ``joint``: the factor
    against the product of the axis shares, measured with several axes thinned at once (used when an axis that
    changed has no curve of its own). Below the thinnest copy measured, the factor stays that copy's."""

    ms: float
    axes: Mapping[int, tuple[np.ndarray, np.ndarray]]
    joint: Optional[tuple[np.ndarray, np.ndarray]] = None

    def factor(self, shares: Sequence[float]) -> float:
        if min(shares, default=1.0) <= 0.0:
            return 0.0   # no channel left on an axis: the layer is gone (a removed residual branch)
        changed = [a for a, x in enumerate(shares) if x < 1.0 - 1e-9]
        if changed and self.joint is not None and not all(a in self.axes for a in changed):
            return float(np.interp(float(np.prod(shares)), *self.joint))
        return float(np.prod([np.interp(shares[a], *self.axes[a]) if a in self.axes else shares[a] for a in changed]))


@dataclass(frozen=True)
class LatencyTable:
    """Per-layer times of one model on one provider at one batch size (milliseconds per run)."""

    provider: str
    batch: int
    total: float                       # all kernels of the original, ms per run
    layers: Mapping[str, LayerCurve]   # Conv/Gemm/MatMul node -> its time under thinning
    overhead: float = 0.0              # ms per run of session.run outside the kernels (no pruning removes it)
    # ms per run (wall clock) of the original as given, where the table was profiled on copies rewritten for the
    # provider (``rewrite`` of :func:`measure_latency`): the latency that fractions are of; None: total + overhead
    baseline: Optional[float] = None
    # tensor -> the time of the other kernels that write or re-order it, over the share of its channels kept (axis 0)
    tensors: Mapping[str, LayerCurve] = field(default_factory=dict)

    def time(self, node: str, shares: Sequence[float]) -> float:
        """Predicted ms of ``node`` with ``shares`` (0–1) of its weight's sliced axes kept (0 for unknown nodes)."""
        layer = self.layers.get(node)
        return 0.0 if layer is None else layer.ms * layer.factor(shares)

    def to_dict(self) -> dict:
        def pair(c):
            return {"share": c[0].round(4).tolist(), "factor": c[1].round(4).tolist()}
        def curves(of: Mapping[str, LayerCurve]) -> dict:
            return {n: {"ms": round(c.ms, 4), "axes": {str(a): pair(v) for a, v in c.axes.items()},
                        "joint": pair(c.joint) if c.joint is not None else None} for n, c in of.items()}
        return {"provider": self.provider, "batch": self.batch, "total_ms": round(self.total, 4),
                "overhead_ms": round(self.overhead, 4),
                **({"baseline_ms": round(self.baseline, 4)} if self.baseline is not None else {}),
                "layers": curves(self.layers), "tensors": curves(self.tensors)}


Rounding = Callable[[ChannelGroup, int], int]


def uniform_mask(analysis: Analysis, share: float, rounded: Optional[Rounding] = None,
                 groups: Optional[Collection[int]] = None) -> np.ndarray:
    """Kept-per-class mask where every prunable group (of ``groups``, indices; None: all) keeps ``share`` of its
    channels (frozen ones always, at least one), each count rounded up by ``rounded(group, count)`` (e.g. to
    the allocation's step)."""
    kept = np.ones(analysis.n_classes, dtype=bool)
    for i, g in enumerate(analysis.groups):
        if not g.prunable or (groups is not None and i not in groups):
            continue
        k = g.fewest(share)
        k = rounded(g, k) if rounded is not None else k
        order = np.lexsort((np.arange(g.size), ~g.frozen))
        kept[g.classes[order[min(k, g.size):]]] = False
    return kept


def two_colours(analysis: Analysis, flops: CostModel) -> list[set[int]]:
    """The prunable groups split in two sets so that, where possible, a layer's input channels and output
    channels are in different sets (breadth-first 2-colouring; a layer on an odd cycle keeps one colour)."""
    group_of = np.full(analysis.n_classes, -1)
    for i, g in enumerate(analysis.groups):
        if g.prunable:
            group_of[g.classes] = i
    axes: dict[int, dict[int, set[int]]] = {}  # term -> axis -> groups on it
    for cls, uses in flops.touches.items():
        if group_of[cls] >= 0:
            for t, a, _ in uses:
                axes.setdefault(t, {}).setdefault(a, set()).add(int(group_of[cls]))
    neighbours: dict[int, set[int]] = {}
    for on_axis in axes.values():
        for a, groups in on_axis.items():
            others = set().union(*(g for b, g in on_axis.items() if b != a))
            for g in groups:
                neighbours.setdefault(g, set()).update(others - {g})
    colour: dict[int, int] = {}
    for start in (i for i, g in enumerate(analysis.groups) if g.prunable):
        if start in colour:
            continue
        colour[start], queue = 0, [start]
        while queue:
            g = queue.pop(0)
            for n in sorted(neighbours.get(g, ())):
                if n not in colour:
                    colour[n] = 1 - colour[g]
                    queue.append(n)
    return [{g for g, c in colour.items() if c == side} for side in (0, 1)]


def measure_latency(model: onnx.ModelProto, analysis: Analysis, feeds: Mapping[str, np.ndarray],
                    provider: ProviderSpec, *, threads: Optional[int] = None, runs: int = 20,
                    rounded: Optional[Rounding] = None, rounds: int = ROUNDS,
                    fractions: Sequence[float] = FRACTIONS,
                    progress: Optional[Callable[[int], None]] = None,
                    rewrite: Optional[Callable[[onnx.ModelProto], onnx.ModelProto]] = None) -> LatencyTable:
    """Profile thinned copies of ``model`` on ``provider`` with ``feeds``; the latency table.

    With ``rewrite`` (the layout rewrite the pruned model will have, ``onnxprune/rewrite/layout.py``) every copy,
    the unthinned one included, is profiled rewritten, and the original as given is timed beside it for the
    ``baseline`` that latency fractions are of.

    The prunable groups are split in two colours (:func:`two_colours`) and each colour is thinned alone to
    each share of ``fractions`` (counts rounded by ``rounded``, as the allocation will round them), so a
    layer's input and output axes are mostly measured one at a time: a convolution's time is close to a
    product of a factor of its input channels and one of its (block-padded) output channels. That gives
    ``copies(fractions)`` copies, each profiled once per round."""
    from onnxprune.plan import PrunePlan
    from onnxprune.rewrite import apply_plan

    flops = CostModel(model, analysis, count_model(model, {k: (1, *v.shape[1:]) for k, v in feeds.items()}), "flops")
    masks = [np.ones(analysis.n_classes, dtype=bool)]
    for side in two_colours(analysis, flops):
        masks += [uniform_mask(analysis, share, rounded, side) for share in sorted(set(fractions) - {1.0}, reverse=True)]
    variants = [model if kept.all() else apply_plan(model, analysis, PrunePlan(kept, {}, [])) for kept in masks]
    if rewrite is not None:
        variants = [rewrite(v) for v in variants]
    # rounds of all copies in turn, so that a burst of load on the machine skews one round, not one copy
    times: list[list[KernelTimes]] = [[] for _ in variants]
    for _ in range(rounds):
        for i, variant in enumerate(variants):
            if i == 0 or not masks[i].all():
                times[i].append(kernel_times(variant, feeds, provider, threads=threads, runs=runs))
            if progress:
                progress(1)
    total = float(np.median([t.total for t in times[0]]))
    full = {n: float(np.median([t.per_node[n] for t in times[0]])) for n in times[0][0].per_node}
    tensor_ms = {n: float(np.median([t.per_tensor.get(n, 0.0) for t in times[0]])) for n in times[0][0].per_tensor
                 if n in analysis.layouts}
    samples: dict[str, tuple[dict[int, list], list]] = {}
    tensor_samples: dict[str, list] = {}
    for kept, measured in zip(masks[1:], times[1:]):
        if not measured:
            continue
        for tensor, ms in tensor_ms.items():
            share = float(analysis.mask(tensor, kept).mean())
            if ms > 0 and share < 1.0 - 1e-9:
                factor = float(np.median([m.per_tensor.get(tensor, 0.0) for m in measured])) / ms
                tensor_samples.setdefault(tensor, []).append((share, factor))
        flops.evaluate(kept)
        for t, node in enumerate(flops.term_nodes):
            shares = flops.shares(t)
            changed = [a for a, x in enumerate(shares) if x < 1.0 - 1e-9]
            if node not in full or not full[node] > 0 or not changed:
                continue
            factor = float(np.median([m.per_node.get(node, 0.0) for m in measured])) / full[node]
            axes, joint = samples.setdefault(node, ({}, []))
            if len(changed) == 1:
                axes.setdefault(changed[0], []).append((shares[changed[0]], factor))
            else:
                joint.append((float(np.prod(shares)), factor))
    layers = {}
    for node, ms in full.items():
        axes, joint = samples.get(node, ({}, []))
        layers[node] = LayerCurve(ms, {a: _curve(p) for a, p in axes.items()}, _curve(joint) if joint else None)
    walls = run_times([variants[0], model] if rewrite is not None else [model], feeds, provider, threads=threads,
                      runs=runs, rounds=rounds)
    wall = float(np.median(walls[0]))
    return LatencyTable(provider.requested, int(next(iter(feeds.values())).shape[0]) if feeds else 1, total, layers,
                        overhead=max(wall - total, 0.0),
                        baseline=float(np.median(walls[1])) if rewrite is not None else None,
                        tensors={n: LayerCurve(tensor_ms[n], {0: _curve(p)}) for n, p in tensor_samples.items()})


def run_times(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], provider: ProviderSpec, *,
              threads: Optional[int] = None, runs: int = 10, rounds: int = ROUNDS, warmup: int = 5,
              seconds: float = ROUND_SECONDS) -> list[list[float]]:
    """Wall-clock ms of ``session.run(feeds)`` per model and round: the median of ``runs`` calls, or of as many as
    take ``seconds`` when that is more (a model that runs in a millisecond is timed over many calls), the models
    taking turns within each round (after ``warmup`` untimed calls each), so that a burst of load skews a round,
    not a model."""
    sessions = [open_session(m.SerializeToString(), provider, threads)[0] for m in models]
    feed = dict(feeds)
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for session, mine in zip(sessions, times):
            calls: list[float] = []
            began = time.perf_counter()
            while len(calls) < runs or time.perf_counter() - began < seconds:
                start = time.perf_counter()
                session.run(None, feed)
                calls.append(1e3 * (time.perf_counter() - start))
            mine.append(float(np.median(calls)))
    return times


@dataclass(frozen=True)
class LatencyCheck:
    """The pruned model's measured wall-clock latency against the original's (ms per run, medians over rounds);
    ``noise``: half the spread of the per-round ratios."""

    original_ms: float
    pruned_ms: float
    ratio: float
    noise: float


def check_latency(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                  provider: ProviderSpec, *, threads: Optional[int] = None, runs: int = 10,
                  rounds: int = 5) -> LatencyCheck:
    """Time both models in interleaved rounds on ``provider`` (:func:`run_times`); their ratio and its noise."""
    first, second = run_times([original, pruned], feeds, provider, threads=threads, runs=runs, rounds=rounds)
    ratios = np.array(second) / np.array(first)
    return LatencyCheck(float(np.median(first)), float(np.median(second)), float(np.median(ratios)),
                        float(0.5 * (ratios.max() - ratios.min())))


def copies(fractions: Sequence[float] = FRACTIONS) -> int:
    """How many models ``measure_latency`` profiles per round: the original and each colour at each share."""
    return 1 + 2 * len(set(fractions) - {1.0})


class LatencyCost(CostModel):
    """Predicted latency (ms per run) under channel removal: each Conv/Gemm/MatMul term costs its measured
    time at its current share of multiply-adds, each tensor of the table's ``tensors`` its measured time at the
    share of its channels kept; the rest of the model costs what it did in the original."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, counts: ModelCounts, table: LatencyTable):
        self.table = table
        self._tensor_terms: dict[int, LayerCurve] = {}   # term -> the curve of the tensor it stands for
        super().__init__(model, analysis, counts, "flops")
        self.kind, self.base = "latency", table.total + table.overhead
        self.before = table.baseline if table.baseline is not None else self.base

    def _add_more_terms(self, analysis: Analysis) -> None:
        """One term per tensor of the table's ``tensors`` that the analysis follows, over its channels."""
        for tensor, curve in self.table.tensors.items():
            if tensor in analysis.layouts:
                self._tensor_terms[len(self.terms)] = curve
                self._add_term(curve.ms, [np.bincount(analysis.classes_of(tensor), minlength=analysis.n_classes)],
                               tensor)

    def _value(self, t: int, dims: Sequence[float]) -> float:
        curve = self._tensor_terms.get(t)
        if curve is not None:
            return curve.ms * curve.factor(self.shares(t, dims))
        return self.table.time(self.term_nodes[t], self.shares(t, dims))
