"""Error-correcting re-fit (entropic-regression.md §8): inputs from the pruned network, targets from the original.

Consumers are visited in stages of topological order: a stage holds the consumers none of whose
upstream consumers are still waiting, so one pass over the calibration data serves the whole
stage. Before each stage the model is rewritten with every removal applied and every earlier
re-fit installed; the stage's inputs X' then carry the error made upstream while the targets Y
stay the original network's outputs, so each re-fit also absorbs what was lost before it. The
kept channels are those of the global allocation: ranking them again on these statistics was
measured to do worse (MNIST CNTK 98.06 % vs 98.34 %, CIFAR tutorial CNN 58.2 % vs 59.0 %).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.model import Analysis, Consumer
from onnxprune.calibration.collect import CalibrationSettings, ConsumerStats, consumer_rows
from onnxprune.calibration.sources import CalibrationData
from onnxprune.graph.probe import add_outputs
from onnxprune.plan import PrunePlan, SolverSettings, consumer_weight_matrix
from onnxprune.rewrite import apply_plan
from onnxprune.runtime import create_session, fixed_batch
from onnxprune.solvers import Refit, refit
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
                     progress: Callable[[int], None] | None = None) -> dict[str, Refit]:
    """Re-fit ``consumers`` stage by stage on error-correcting statistics; returns the re-fits."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    w_arrays = {c.weight: numpy_helper.to_array(inits[c.weight]) for c in consumers}
    outputs = list(dict.fromkeys(c.output for c in consumers))
    original = create_session(add_outputs(model, outputs), settings.provider)
    run = _Pass(model, analysis, data, indices, settings, w_arrays, nodes, original, outputs)
    refits: dict[str, Refit] = {}
    for stage in consumer_stages(model, consumers):
        stats = run.collect(stage, apply_plan(model, analysis, PrunePlan(plan.kept, refits, [])))
        for c in stage:
            kept_cols = np.repeat(analysis.mask(c.input, plan.kept), c.kernel)
            w0 = consumer_weight_matrix(nodes[c.node], c, w_arrays)[:, kept_cols]
            entry = stats[c.node]
            cols = np.arange(int(kept_cols.sum()))  # X' holds only the kept columns
            if solver.delta is None:
                refits[c.node], _ = refit_towards(entry.full.centred(), cols, w0, entry.folds())
            else:
                refits[c.node] = refit(entry.full.centred(), cols, solver.delta)
        if progress:
            progress(len(stage))
    return refits


def refit_errors(refits: Mapping[str, Refit], analysis: Analysis) -> dict[int, float]:
    """Mean re-fit error per group id over its re-fitted consumers."""
    out: dict[int, list[float]] = {}
    for g in analysis.groups:
        for c in g.consumers:
            if c.node in refits:
                out.setdefault(g.id, []).append(refits[c.node].error)
    return {k: float(np.mean(v)) for k, v in out.items()}
