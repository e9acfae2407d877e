"""Compress's first calibration pass on its own, over one shard of the calibration set: ``onnxprune calibrate``.

Run shard K of N on N machines (or one after another), then ``compress --stats`` sums the N files instead of
calibrating: statistics add, each shard samples the same positions a single pass would, and the files are summed
in the order a single pass sums its blocks (``calibration/blocks.py``), so the model comes out byte for byte the same.
"""
from __future__ import annotations

import os

from onnxprune.analysis import exclude_nodes, find_groups
from onnxprune.calibration.parallel import Passes
from onnxprune.calibration.store import StatsHeader, write_statistics
from onnxprune.compress import CompressOptions, ProgressFactory, first_pass, load_inputs, with_chosen_batch
from onnxprune.errors import UsageError
from onnxprune.graph.io import check_output_path
from onnxprune.solvers import backend


def calibrate(model_path: str | os.PathLike, data_path: str | os.PathLike, output: str | os.PathLike,
              options: CompressOptions = CompressOptions(), *, shard: tuple[int, int] = (1, 1), force: bool = False,
              progress: ProgressFactory | None = None) -> StatsHeader:
    """Write the first-pass statistics of shard ``shard = (K, N)`` of compress's calibration samples to ``output``.

    ``options`` are those of the compress run the statistics are for (data, split and calibration options;
    ``independent`` keeps the folds its re-fits need). Returns the file's header; nothing is written on error.
    """
    out = check_output_path(output, model_path, force=force)
    loaded = load_inputs(model_path, data_path, options)
    options = with_chosen_batch(options, loaded)
    analysis = find_groups(loaded.model, loaded.shapes)
    exclude_nodes(analysis, options.exclude)
    first = first_pass(loaded, analysis, options)
    if not first.consumers:
        raise UsageError(f"nothing to calibrate in '{model_path}': every channel group is frozen.",
                         note="'onnxprune analyze' shows why")
    k, n = shard
    passes = Passes(options.executor) if options.executor is not None and options.executor.remote else None
    with backend.using(options.backend):
        if progress is None:
            partial = first.collect(k, n, passes=passes)
        else:
            with progress("calibrating", len(first.shard(k, n)[0])) as bar:
                partial = first.collect(k, n, bar.update, passes=passes)
    if partial.complete:
        partial.total()  # the whole split: one node, the sum a single pass takes
    header = first.header(partial, k, n)
    write_statistics(out, header, partial)
    return header
