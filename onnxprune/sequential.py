"""Error-correcting re-fit (entropic-regression.md §8): inputs from the pruned network, targets from the original.

Consumers are visited in stages of topological order: a stage holds the consumers none of whose
upstream consumers are still waiting, so one pass over the calibration data serves the whole
stage. For each stage the model is rewritten with every removal applied and every earlier
re-fit installed; its consumers' inputs X' then carry the error made upstream, while the targets
Y stay the original network's outputs, so each re-fit also absorbs what was lost before it.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, Consumer
from onnxprune.calibration.collect import FOLD_ROWS_PER_COLUMN, CalibrationSettings, ConsumerStats, consumer_rows
from onnxprune.calibration.sources import CalibrationData
from onnxprune.graph.probe import add_outputs
from onnxprune.plan import PrunePlan, consumer_weight_matrix
from onnxprune.rewrite import apply_plan
from onnxprune.runtime import create_session, fixed_batch
from onnxprune.solvers import Refit
from onnxprune.solvers.shrinkage import refit_towards
from onnxprune.solvers.statistics import LinearStatistics


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


def sequential_refit(model: onnx.ModelProto, analysis: Analysis, plan: PrunePlan, consumers: Sequence[Consumer],
                     data: CalibrationData, indices: Sequence[int], settings: CalibrationSettings,
                     progress: Callable[[int], None] | None = None) -> dict[str, Refit]:
    """Re-fit ``consumers`` one stage at a time on error-correcting statistics; returns the re-fits."""
    nodes = {n.name: n for n in model.graph.node}
    weights = {i.name: i for i in model.graph.initializer}
    from onnx import numpy_helper

    w_arrays = {c.weight: numpy_helper.to_array(weights[c.weight]) for c in consumers}
    outputs = list(dict.fromkeys(c.output for c in consumers))
    original = create_session(add_outputs(model, outputs), settings.provider)
    batch = fixed_batch(model) or settings.batch_size
    refits: dict[str, Refit] = dict(plan.refits)
    indices = list(indices)
    for stage in consumer_stages(model, consumers):
        current = apply_plan(model, analysis, PrunePlan(plan.kept, refits, []))
        inputs = list(dict.fromkeys(c.input for c in stage))
        pruned = create_session(add_outputs(current, inputs), settings.provider)
        rng = np.random.default_rng(settings.seed)
        stats: dict[str, ConsumerStats] = {}
        for idx, feed in data.batches(indices, batch):
            ys = dict(zip(outputs, original.run(outputs, feed)))
            xs = dict(zip(inputs, pruned.run(inputs, feed)))
            odd = np.asarray(idx) % 2 == 1
            for c in stage:
                shape = w_arrays[c.weight].shape
                X, Y = consumer_rows(nodes[c.node], c, xs[c.input], ys[c.output], shape, rng, settings.max_positions)
                p, m = X.shape[-1], Y.shape[-1]
                if c.node not in stats:
                    few = X.shape[1] * len(indices) < FOLD_ROWS_PER_COLUMN * p
                    stats[c.node] = ConsumerStats(LinearStatistics(p, m), LinearStatistics(p, m) if few else None)
                stats[c.node].full.partial_fit(X.reshape(-1, p), Y.reshape(-1, m))
                if stats[c.node].odd is not None and odd.any():
                    stats[c.node].odd.partial_fit(X[odd].reshape(-1, p), Y[odd].reshape(-1, m))
        for c in stage:
            mask = analysis.mask(c.input, plan.kept)
            w0 = consumer_weight_matrix(nodes[c.node], c, w_arrays)
            kept_cols = np.flatnonzero(np.repeat(mask, c.kernel))
            fit, _ = refit_towards(stats[c.node].full.centred(), np.arange(len(kept_cols)), w0[:, kept_cols],
                                   stats[c.node].folds())
            refits[c.node] = fit
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
