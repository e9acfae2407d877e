"""Calibration passes run by an executor (``onnxprune/executor.py``), sharded by whole blocks.

A pass over blocks [first, stop) of the calibration split is cut into one run of whole blocks per task slot
(``Executor.slots``); each task runs :func:`collect_blocks` on its run and returns the run's tree nodes, and the
driver pushes them in block order into one :class:`PairwiseSum`. That repeats the additions of one pass over the
whole split (``blocks.py``), so the statistics are the same to the last bit, however many workers computed them.

The model (and, for an error-correcting pass, the network pruned so far) travels once per pass through the
object store as ONNX bytes. Workers read the samples from ``--data`` themselves (a path every node sees; relative
paths are taken from the driver's working directory), or, with ``ship_data``, the driver reads each block's
samples and puts the arrays into the object store once per run (:class:`ShippedData`), reused by every pass.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.calibration.blocks import BlockLayout, Node, PairwiseSum
from onnxprune.calibration.collect import (CalibrationSettings, ConsumerStats, Partial, calibration_batch,
                                            collect_blocks, merge_blocks)
from onnxprune.calibration.frontier import FrontierStore
from onnxprune.calibration.sources import CalibrationData, InputSpec
from onnxprune.calibration.stage_pass import StagePass, stage_blocks
from onnxprune.errors import UsageError
from onnxprune.executor import Executor, resolve
from onnxprune.residual import Landing


class ShippedData(CalibrationData):
    """The samples ``indices`` of a data set, held in memory (``arrays``: input name → (len(indices), ...)), indexed
    like the data set they came from (``count`` samples); a task of ``--ray-ship-data`` reads its run from them."""

    kind = "shipped"

    def __init__(self, path, inputs: Sequence[InputSpec], count: int, indices: np.ndarray,
                 arrays: Mapping[str, np.ndarray]):
        super().__init__(path, inputs, count, None)
        self._indices = np.asarray(indices, dtype=np.int64)
        self._order = np.argsort(self._indices, kind="stable")
        self._sorted = self._indices[self._order]
        self._arrays = dict(arrays)

    def _load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        at = np.minimum(np.searchsorted(self._sorted, idx), max(len(self._sorted) - 1, 0))
        if len(idx) and (not len(self._sorted) or not np.array_equal(self._sorted[at], idx)):
            missing = int(idx[self._sorted[at] != idx][0]) if len(self._sorted) else int(idx[0])
            raise IndexError(f"sample {missing} was not shipped with this task")
        rows = self._order[at]
        return {name: np.ascontiguousarray(values[rows]) for name, values in self._arrays.items()}


@dataclass
class _PassContext:
    """What every task of one pass shares (one object-store entry per pass)."""

    model: bytes
    inputs_model: bytes | None
    consumers: list[Consumer]
    data: CalibrationData | None    # None: each task brings its shipped samples
    indices: np.ndarray
    settings: CalibrationSettings
    folds: bool
    landings: Mapping[str, Landing] | None
    output_masks: Mapping[str, np.ndarray] | None


def _pass_task(context: _PassContext, item) -> list[Node[dict[str, ConsumerStats]]]:
    """The tree nodes of one run of blocks (a task)."""
    run, shipped = item
    data = context.data if shipped is None else _unship(shipped)
    model = onnx.load_from_string(context.model)
    inputs_model = None if context.inputs_model is None else onnx.load_from_string(context.inputs_model)
    partial = collect_blocks(model, context.consumers, data, context.indices, context.settings, None, context.folds,
                             inputs_model, blocks=run, landings=context.landings, output_masks=context.output_masks)
    return partial.nodes


@dataclass
class _StageContext:
    """What every task of one error-correcting stage's pass shares: the stage (its models as ONNX bytes)."""

    stage: StagePass
    data: CalibrationData | None
    indices: np.ndarray
    settings: CalibrationSettings


def _stage_task(context: _StageContext, item) -> tuple[list[Node[dict[str, ConsumerStats]]], dict[int, dict]]:
    """The tree nodes of one run of blocks of a stage's pass, and the frontier it leaves for those batches."""
    run, entries, shipped = item
    data = context.data if shipped is None else _unship(shipped)
    stage = dataclasses.replace(context.stage, model=onnx.load_from_string(context.stage.model),
                                models={net: None if model is None else onnx.load_from_string(model)
                                        for net, model in context.stage.models.items()})
    with FrontierStore(budget=sys.maxsize) as store:
        for number, entry in entries.items():
            store.set(number, entry)
        partial = stage_blocks(stage, store, data, context.indices, context.settings, blocks=run)
        return partial.nodes, {number: store.get(number) for number in store.batches()} if stage.advance else {}


def _unship(shipped: tuple) -> ShippedData:
    """The samples of a run from its blocks' object-store entries."""
    path, inputs, count, blocks = shipped
    parts = [resolve(ref) for ref in blocks]
    indices = np.concatenate([idx for idx, _ in parts])
    arrays = {spec.name: np.concatenate([arrays[spec.name] for _, arrays in parts]) for spec in inputs}
    return ShippedData(path, inputs, count, indices, arrays)


def runs_of(first: int, stop: int, slots: int) -> list[tuple[int, int]]:
    """Blocks [first, stop) cut into at most ``slots`` runs of whole blocks, in block order."""
    n = stop - first
    m = max(min(slots, n), 1)
    return [(first + k * n // m, first + (k + 1) * n // m) for k in range(m)]


class Passes:
    """Calibration passes of one run (a compress or calibrate call) as tasks of a remote ``executor`` (without one,
    the passes run in this process as :func:`collect_blocks` calls).

    Keeps the shipped samples (``executor.ship_data``) between passes, so each block travels once per run."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self._shipped: dict[tuple[int, int], object] = {}
        self._data: CalibrationData | None = None
        # per pass: blocks, seconds of each task, wall seconds and seconds of the driver's reduction
        self.log: list[dict] = []

    def blocks(self, model: onnx.ModelProto, consumers: Sequence[Consumer], data: CalibrationData,
               indices: Sequence[int], settings: CalibrationSettings = CalibrationSettings(),
               progress: Callable[[int], None] | None = None, folds: bool = True,
               inputs_model: onnx.ModelProto | None = None, *, blocks: tuple[int, int] | None = None,
               landings: Mapping[str, Landing] | None = None,
               output_masks: Mapping[str, np.ndarray] | None = None) -> Partial:
        """:func:`collect_blocks` (same arguments and result), its runs of blocks computed as tasks."""
        executor = self.executor
        began = time.perf_counter()
        indices = np.asarray(list(indices), dtype=np.int64)
        layout = BlockLayout(len(indices), calibration_batch(model, settings))
        first, stop = blocks or (0, layout.count)
        partial: Partial = PairwiseSum(layout.count, merge_blocks)
        if not consumers or first >= stop:
            return partial
        runs = runs_of(first, stop, executor.slots())
        context = _PassContext(_bytes(model), None if inputs_model is None else _bytes(inputs_model), list(consumers),
                               None if executor.ship_data else data, indices,
                               dataclasses.replace(settings, threads=1), folds,
                               None if landings is None else dict(landings),
                               None if output_masks is None else dict(output_masks))
        items = [(run, self._ship(data, indices, layout, run) if executor.ship_data else None) for run in runs]

        def done(i: int, _nodes) -> None:
            if progress:
                start, end = layout.span(*runs[i])
                progress(end - start)

        results = executor.map(_pass_task, items, context=context, on_done=done)
        reducing = time.perf_counter()
        for nodes in results:
            partial.extend(nodes)
        self.log.append({"runs": runs, "task_seconds": list(executor.last_seconds),
                         "wall_seconds": time.perf_counter() - began, "reduce_seconds": time.perf_counter() - reducing})
        return partial

    def stage(self, stage: StagePass, store: FrontierStore, data: CalibrationData, indices: Sequence[int],
              settings: CalibrationSettings = CalibrationSettings()) -> Partial:
        """:func:`stage_blocks` over all blocks, its runs of blocks computed as tasks: each task takes its batches'
        frontier from ``store`` and gives back the next one, which goes back into ``store``."""
        executor = self.executor
        began = time.perf_counter()
        indices = np.asarray(list(indices), dtype=np.int64)
        batch = calibration_batch(stage.model, settings)
        layout = BlockLayout(len(indices), batch)
        partial: Partial = PairwiseSum(layout.count, merge_blocks)
        if not stage.consumers:
            return partial
        runs = runs_of(0, layout.count, executor.slots())
        models = {net: None if model is None else _bytes(model) for net, model in stage.models.items()}
        context = _StageContext(dataclasses.replace(stage, model=_bytes(stage.model), models=models),
                                None if executor.ship_data else data, indices, dataclasses.replace(settings, threads=1))
        items = []
        for run in runs:
            entries = {n: {key: np.array(value) for key, value in store.get(n).items()}
                       for n in layout.batch_numbers(*run)}
            shipped = self._ship(data, indices, layout, run) if executor.ship_data and stage.read_data else None
            items.append((run, entries, shipped))
        results = executor.map(_stage_task, items, context=context)
        reducing = time.perf_counter()
        for nodes, entries in results:
            partial.extend(nodes)
            for number, entry in entries.items():
                store.set(number, entry)
        self.log.append({"runs": runs, "task_seconds": list(executor.last_seconds),
                         "wall_seconds": time.perf_counter() - began, "reduce_seconds": time.perf_counter() - reducing})
        return partial

    def _ship(self, data: CalibrationData, indices: np.ndarray, layout: BlockLayout, run: tuple[int, int]) -> tuple:
        """The object-store entries of the samples of ``run``, one per block (put once per run of Passes)."""
        if self._data is not data:
            self._data, self._shipped = data, {}
        refs = []
        for block in range(*run):
            start, end = layout.span(block, block + 1)
            key = (start, end, int(indices[start]), int(indices[end - 1]))
            if key not in self._shipped:
                chunk = indices[start:end]
                self._shipped[key] = self.executor.put((chunk, data.load(chunk)))
            refs.append(self._shipped[key])
        return data.path, list(data.inputs), len(data), refs


def _bytes(model: onnx.ModelProto) -> bytes:
    from onnxprune.graph.io import serialised

    payload = serialised(model)
    if payload is None:
        raise UsageError("--ray does not take models over protobuf's 2 GB limit.",
                         note="run without --ray, or use 'onnxprune calibrate --shard K/N' on several machines")
    return payload
