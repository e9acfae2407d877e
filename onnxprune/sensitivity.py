"""How far each group's pruning reaches the model's outputs: measured, to calibrate the allocation's error curves.

The allocation compares groups by their consumers' re-fit errors (``plan._rank``), weighted by where the error
lands. On compact networks (depthwise + SE blocks, narrow bottlenecks) that prediction and the damage at the
output part ways. Here each prunable group is cut alone to ``level`` of its channels (its best ones by the
ranking, its consumers re-fitted from the first-pass statistics), the thinned model runs on a few calibration
samples, and the relative error of its outputs against the original's is compared with what the group's curve
predicts at that count. The ratio scales the whole curve (:func:`calibrate_curves`): a group whose layer error
understates the damage at the output becomes dearer to prune, one that overstates it cheaper.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis
from onnxprune.calibration.collect import ConsumerStats
from onnxprune.calibration.sources import CalibrationData
from onnxprune.graph.normalise import initializer_arrays
from onnxprune.plan import RankedGroup, SolverSettings, refit_kept
from onnxprune.rewrite.apply import apply_plan
from onnxprune.runtime import create_session, fixed_batch

LEVEL = 0.5     # share of a group's channels kept while its reach is measured
SAMPLES = 16    # calibration samples the thinned models run on
SPREAD = 4.0    # gains are held within this factor of their median


def output_gains(model: onnx.ModelProto, analysis: Analysis, ranked: Sequence[RankedGroup],
                 stats: Mapping[str, ConsumerStats], settings: SolverSettings, data: CalibrationData,
                 indices: Sequence[int], *, level: float = LEVEL, provider: str = "cpu",
                 progress: Callable[[int], None] | None = None) -> dict[int, float]:
    """Per group id: measured relative output error / the curve's prediction, with the group alone cut to
    ``level`` of its channels (frozen ones kept). Groups whose prediction or measurement is 0 get no entry."""
    indices = list(indices)
    batch = fixed_batch(model) or len(indices)
    names = [o.name for o in model.graph.output]
    feeds = [feed for _, feed in data.batches(indices, batch)]
    reference = create_session(model, provider)
    expected = [reference.run(names, feed) for feed in feeds]
    energy = _channel_energy(expected)
    weights = initializer_arrays(model)
    gains: dict[int, float] = {}
    for r in ranked:
        k = r.group.fewest(level)
        if k < r.group.size and r.curve[k] > 0:
            kept = np.ones(analysis.n_classes, dtype=bool)
            kept[r.group.classes[r.order[k:]]] = False
            plan = refit_kept(model, analysis, stats, settings, [r], kept, weights=weights)
            session = create_session(apply_plan(model, analysis, plan, shapes=False), provider)
            error = output_error(expected, [session.run(names, feed) for feed in feeds], energy)
            if error > 0:
                gains[r.group.id] = error / float(r.curve[k])
        if progress:
            progress(1)
    return gains


def output_error(expected: Sequence[Sequence[np.ndarray]], actual: Sequence[Sequence[np.ndarray]],
                 energy: Sequence[np.ndarray] | None = None) -> float:
    """Relative squared error of the outputs, per output channel (axis 1) and averaged over channels and outputs:
    a YOLO head's class scores then count next to its box coordinates in pixels, whose energy would drown them.
    ``expected`` and ``actual`` hold the outputs of each batch; ``energy`` is ``expected``'s per-channel energy
    when already at hand."""
    energy = _channel_energy(expected) if energy is None else energy
    errors = []
    for k, total in enumerate(energy):
        error = sum(_per_channel(np.asarray(outs[k], np.float64) - np.asarray(ref[k], np.float64))
                    for outs, ref in zip(actual, expected))
        present = total > 0
        if present.any():
            errors.append(float(np.mean(error[present] / total[present])))
    return float(np.mean(errors)) if errors else 0.0


def _channel_energy(outputs: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per output, the sum of squares of each channel (axis 1) over the batches."""
    return [sum(_per_channel(np.asarray(outs[k], np.float64)) for outs in outputs) for k in range(len(outputs[0]))]


def _per_channel(a: np.ndarray) -> np.ndarray:
    """Sum of squares per index of axis 1 (the whole array as one channel below rank 2)."""
    a = a.reshape(a.shape[0], a.shape[1], -1) if a.ndim >= 2 else a.reshape(1, 1, -1)
    return np.einsum("ncx,ncx->c", a, a)


def calibrate_curves(ranked: Sequence[RankedGroup], gains: Mapping[int, float]) -> list[RankedGroup]:
    """The ranked groups with each curve scaled by its group's gain, held within ``SPREAD`` times the median gain
    either way (one group's reach at half its channels says little of it at a tenth); unmeasured groups take the
    median, so that they keep their place among the others."""
    if not gains:
        return list(ranked)
    typical = float(np.median(list(gains.values())))
    return [replace(r, curve=r.curve * float(np.clip(gains.get(r.group.id, typical), typical / SPREAD,
                                                     typical * SPREAD))) for r in ranked]

