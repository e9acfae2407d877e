"""One error-correcting stage's pass: its segments of the original and the pruned network, once per batch.

Each batch starts from what the frontier store kept for it after the previous stage (``frontier.py``), runs the
stage's segment of each network (``segments.py``; one ONNX Runtime session per segment, made once per pass),
adds the stage's consumers' rows to the statistics exactly as :func:`collect_blocks` would (same positions,
same block tree), and leaves the new frontier in the store. Only the first stage reads the calibration data,
unless the first pass already kept what it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.calibration.blocks import BlockLayout, PairwiseSum
from onnxprune.calibration.collect import (CalibrationSettings, Partial, Rows, calibration_batch, merge_blocks,
                                           prefetched)
from onnxprune.calibration.frontier import FrontierStore
from onnxprune.calibration.segments import Segment
from onnxprune.calibration.sources import CalibrationData
from onnxprune.rectified import TargetShift
from onnxprune.residual import Landing
from onnxprune.runtime import create_session

ORIGINAL, PRUNED = "original", "pruned"   # the two networks' keys in the frontier store


@dataclass
class StagePass:
    """What one stage's pass needs: the original ``model`` (the consumers' nodes and weight shapes), the stage's
    ``consumers``, each network's segment and the model that runs it (None when it computes nothing), whether it
    reads the calibration data, and the residual landings whose targets this stage builds. A shift pass
    (``rectified.py``) sums the target ``shifts`` of those consumers instead of their statistics; a pass that
    does not ``advance`` leaves the store as it found it (another pass of the stage follows)."""

    model: onnx.ModelProto
    consumers: list[Consumer]
    segments: dict[str, Segment]
    models: dict[str, onnx.ModelProto | None]
    read_data: bool
    landings: Mapping[str, Landing]
    output_masks: Mapping[str, np.ndarray]
    shifts: Mapping[str, TargetShift] | None = None
    advance: bool = True


def stage_blocks(stage: StagePass, store: FrontierStore, data: CalibrationData, indices: Sequence[int],
                 settings: CalibrationSettings = CalibrationSettings(),
                 progress: Callable[[int], None] | None = None, *, blocks: tuple[int, int] | None = None) -> Partial:
    """The statistics of blocks [first, stop) = ``blocks`` (default: all) of the stage's consumers on
    error-correcting statistics (inputs from the pruned network, targets from the original), as tree nodes;
    ``store`` holds each batch's frontier before the stage and holds the next one after it."""
    indices = np.asarray(list(indices), dtype=np.int64)
    batch = calibration_batch(stage.model, settings)
    layout = BlockLayout(len(indices), batch)
    first, stop = blocks or (0, layout.count)
    if not stage.consumers or first >= stop:
        return PairwiseSum(layout.count, merge_blocks)
    sessions = {net: None if model is None else create_session(model, settings.provider, settings.threads)
                for net, model in stage.models.items()}
    feeds_of = {net: [i.name for i in session.get_inputs()] for net, session in sessions.items() if session is not None}
    start, end = layout.span(first, stop)

    def run() -> Iterator[tuple[np.ndarray, dict, dict]]:
        feeds = prefetched(data.batches(indices[start:end], batch)) if stage.read_data else None
        for number in layout.batch_numbers(first, stop):
            idx = indices[number * batch:min((number + 1) * batch, end)]
            kept = store.get(number)
            feed = next(feeds)[1] if feeds is not None else {}
            have = {}
            for net, segment in stage.segments.items():
                tensors = {name: value for (owner, name), value in kept.items() if owner == net}
                tensors.update(feed)
                session = sessions[net]
                if session is not None:
                    got = session.run(list(segment.outputs), {name: tensors[name] for name in feeds_of[net]})
                    tensors.update(zip(segment.outputs, got))
                have[net] = tensors
            if stage.advance:
                store.set(number, {(net, name): have[net][name] for net, segment in stage.segments.items()
                                   for name in segment.keep})
            yield idx, have[ORIGINAL], have[PRUNED]
            del have, kept, feed
        if feeds is not None:
            feeds.close()

    rows = Rows(stage.model, stage.consumers, settings, len(indices), stage.landings, measure_gains=False,
                output_masks=stage.output_masks, shifts=stage.shifts)
    return rows.accumulate(layout, first, stop, run(), progress)
