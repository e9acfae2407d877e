"""Error-correcting selection and re-fit (entropic-regression.md §8): inputs from the pruned network,
targets from the original.

Consumers are visited in stages of topological order: a stage holds the consumers none of whose
upstream consumers are still waiting, so one pass over the calibration data serves the whole
stage. Before each stage the model is rewritten with every decision taken so far (removals and
re-fits); groups not yet decided keep all their channels. A group is decided at the stage of its
first consumer: its channels are ranked again on statistics whose inputs carry the error made
upstream, keeping the count the global allocation gave it. Each consumer is then re-fitted with
targets from the original network, so it also absorbs what was lost before it.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.groups import consumer_columns
from onnxprune.analysis.model import Analysis, ChannelGroup, Consumer
from onnxprune.calibration.collect import CalibrationSettings, ConsumerStats, consumer_rows
from onnxprune.calibration.sources import CalibrationData
from onnxprune.graph.probe import add_outputs
from onnxprune.plan import PrunePlan, SolverSettings, consumer_weight_matrix
from onnxprune.rewrite import apply_plan
from onnxprune.runtime import create_session, fixed_batch
from onnxprune.solvers import ConsumerProblem, Refit, rank_channels, refit
from onnxprune.solvers.shrinkage import refit_towards


def consumer_stages(model: onnx.ModelProto, consumers: Sequence[Consumer]) -> list[list[Consumer]]:
    """Consumers grouped so that no consumer depends on the output of another in its own or a later stage."""
    producer = {t: n for n in model.graph.node for t in n.output}
    names = {c.node for c in consumers}
    level: dict[str, int] = {}
    for node in model.graph.node:  # nodes are topologically sorted
        up = [level[producer[t].name] for t in node.input if t in producer and producer[t].name in level]
        base = max(up, default=0)
        level[node.name] = base + 1 if node.name in names else base
    stages: dict[int, list[Consumer]] = {}
    for c in consumers:
        stages.setdefault(level[c.node], []).append(c)
    return [stages[k] for k in sorted(stages)]


class _Pass:
    """One stage's pass: error-correcting statistics for the stage's consumers."""

    def __init__(self, model, analysis, data, indices, settings, w_arrays, nodes, original, outputs):
        self.model, self.analysis, self.data, self.indices = model, analysis, data, list(indices)
        self.settings, self.w_arrays, self.nodes = settings, w_arrays, nodes
        self.original, self.outputs = original, outputs

    def collect(self, stage: list[Consumer], current: onnx.ModelProto) -> dict[str, ConsumerStats]:
        inputs = list(dict.fromkeys(c.input for c in stage))
        pruned = create_session(add_outputs(current, inputs), self.settings.provider)
        rng = np.random.default_rng(self.settings.seed)
        stats: dict[str, ConsumerStats] = {}
        for idx, feed in self.data.batches(self.indices, fixed_batch(self.model) or self.settings.batch_size):
            ys = dict(zip(self.outputs, self.original.run(self.outputs, feed)))
            xs = dict(zip(inputs, pruned.run(inputs, feed)))
            odd = np.asarray(idx) % 2 == 1
            for c in stage:
                X, Y = consumer_rows(self.nodes[c.node], c, xs[c.input], ys[c.output], self.w_arrays[c.weight].shape,
                                     rng, self.settings.max_positions)
                if c.node not in stats:
                    stats[c.node] = ConsumerStats.for_rows(X, Y, len(self.indices))
                stats[c.node].add(X, Y, odd)
        return {k: v.flush() for k, v in stats.items()}


def sequential_refit(model: onnx.ModelProto, analysis: Analysis, plan: PrunePlan, consumers: Sequence[Consumer],
                     data: CalibrationData, indices: Sequence[int], settings: CalibrationSettings,
                     solver: SolverSettings = SolverSettings(),
                     progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict[str, Refit]]:
    """Decide and re-fit ``consumers`` stage by stage on error-correcting statistics.

    Returns the final kept-per-class mask (same count per group as ``plan.kept``) and the re-fits.
    """
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    w_arrays = {c.weight: numpy_helper.to_array(inits[c.weight]) for c in consumers}
    outputs = list(dict.fromkeys(c.output for c in consumers))
    original = create_session(add_outputs(model, outputs), settings.provider)
    run = _Pass(model, analysis, data, indices, settings, w_arrays, nodes, original, outputs)
    group_of = {c.node: g for g in analysis.groups for c in g.consumers}
    pending = {group_of[c.node].id for c in consumers}
    kept = plan.kept.copy()
    for g in analysis.groups:
        if g.id in pending:
            kept[g.classes] = True
    refits: dict[str, Refit] = {}
    for stage in consumer_stages(model, consumers):
        built = kept.copy()
        stats = run.collect(stage, apply_plan(model, analysis, PrunePlan(built, refits, [])))
        for g in dict.fromkeys(group_of[c.node].id for c in stage):
            if g in pending:
                group = analysis.groups[g]
                here = [c for c in stage if group_of[c.node].id == g]
                kept[group.classes] = _select(group, here, stats, analysis, plan.kept, w_arrays, nodes, solver)
                pending.discard(g)
        for c in stage:
            present = analysis.mask(c.input, built)
            final = analysis.mask(c.input, kept)
            cols = np.flatnonzero(np.repeat(final[present], c.kernel))
            w0 = consumer_weight_matrix(nodes[c.node], c, w_arrays)[:, np.repeat(final, c.kernel)]
            entry = stats[c.node]
            if solver.delta is None:
                refits[c.node], _ = refit_towards(entry.full.centred(), cols, w0, entry.folds())
            else:
                refits[c.node] = refit(entry.full.centred(), cols, solver.delta)
        if progress:
            progress(len(stage))
    return kept, refits


def _select(group: ChannelGroup, stage_consumers: list[Consumer], stats: Mapping[str, ConsumerStats],
            analysis: Analysis, allocated: np.ndarray, w_arrays, nodes, solver: SolverSettings) -> np.ndarray:
    """Kept mask over the group's classes: the allocated count, ranked on the error-correcting statistics."""
    count = int(allocated[group.classes].sum())
    if count == group.size:
        return np.ones(group.size, dtype=bool)
    problems = [ConsumerProblem(stats[c.node].full.centred(), consumer_columns(analysis, group, c)) for c in stage_consumers]
    mats = [consumer_weight_matrix(nodes[c.node], c, w_arrays) for c in stage_consumers]
    scores = rank_channels(solver.method, problems, group.size, weights=mats, seed=solver.seed + group.id,
                           rho=solver.rho, tau=solver.tau)
    order = np.lexsort((-scores, ~group.frozen))
    local = np.zeros(group.size, dtype=bool)
    local[order[:count]] = True
    return local


def refit_errors(refits: Mapping[str, Refit], analysis: Analysis) -> dict[int, float]:
    """Mean re-fit error per group id over its re-fitted consumers."""
    out: dict[int, list[float]] = {}
    for g in analysis.groups:
        for c in g.consumers:
            if c.node in refits:
                out.setdefault(g.id, []).append(refits[c.node].error)
    return {k: float(np.mean(v)) for k, v in out.items()}
