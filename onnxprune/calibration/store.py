"""First-pass statistics on disk: the files ``onnxprune calibrate`` writes and ``compress --stats``/``--cache`` read.

A statistics file is an uncompressed .npz: ``header`` (JSON, :class:`StatsHeader`: what the statistics were
computed from) and, for tree node j of the header's list (``blocks.py``: the file's run of blocks) and consumer i
of its list, the raw sums ``j.i.full.KEY`` and, where the odd fold was kept, ``j.i.odd.KEY`` (the keys of
:meth:`LinearStatistics.to_arrays`). Statistics add (entropic-regression.md §2), so the N shards of one
calibration set are summed, in the one order a single pass sums them; a file of another model, other samples,
another split or other settings is refused with one line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.atomic import atomic_path
from onnxprune.calibration.blocks import BlockLayout, Node, PairwiseSum
from onnxprune.calibration.collect import (CalibrationSettings, ConsumerStats, Keep, Partial, calibration_batch,
                                            collect_blocks, merge_blocks, pass_tensors)
from onnxprune.calibration.fingerprint import data_fingerprint, indices_fingerprint, model_fingerprint
from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import DataError, UsageError
from onnxprune.residual import Landing
from onnxprune.solvers.fold_curve import CURVE_FOLD_COLUMNS
from onnxprune.solvers.statistics import LinearStatistics

if TYPE_CHECKING:
    from onnxprune.calibration.parallel import Passes

FORMAT = "onnxprune-statistics/3"   # 3: odd folds of layers up to CURVE_FOLD_COLUMNS always kept
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


@dataclass(frozen=True)
class StatsHeader:
    """What a statistics file was computed from: shard ``shard[0]`` of ``shard[1]`` of compress's first pass."""

    model: str                  # model_fingerprint of the normalised float32 model
    consumers: list[str]        # consumer node names, in file order
    shapes: list[list[int]]     # (columns p, outputs M) per consumer
    data: str                   # data_fingerprint of this shard's samples
    indices: str                # indices_fingerprint of the whole calibration split
    samples: int                # samples in this shard
    total: int                  # samples in the whole calibration split
    shard: list[int]            # [K, N], 1 <= K <= N
    batch: int
    seed: int
    max_positions: int | None
    folds: bool                 # odd folds kept at every width (for compress --independent), not only the narrower
    provider: str
    blocks: int                 # blocks of the whole split (BlockLayout.count)
    nodes: list[list[int]]      # [first block, block count] per tree node in the file
    format: str = FORMAT
    guides: list[list[str]] = dataclasses.field(default_factory=list)  # [consumer, score map]: guided positions

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StatsHeader":
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise ValueError(f"format {found} is not {FORMAT}" if found else f"not an {FORMAT} header")
        return cls(**raw)

    def identity(self) -> dict:
        """Every field but the consumer shapes and tree nodes: what the statistics were computed from."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("shapes", "nodes")}


class FirstPass:
    """Compress's first calibration pass: statistics of ``consumers`` of the float32 ``model`` over the calibration
    split ``indices`` of ``data``, in one pass or in shards of whole blocks (``blocks.py``) that sum to the same
    statistics, bit for bit (``landings``: the consumers writing into a residual sum, whose gains the pass measures)."""

    def __init__(self, model: onnx.ModelProto, consumers: Sequence[Consumer], data: CalibrationData,
                 indices: np.ndarray, settings: CalibrationSettings, folds: bool,
                 landings: Mapping[str, Landing] | None = None):
        self.model = model
        self.consumers = list(consumers)
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.settings = settings
        self.folds = folds
        self.landings = landings
        self.batch = calibration_batch(model, settings)
        self.layout = BlockLayout(len(self.indices), self.batch)
        self._data_fingerprints: dict[tuple[int, int], str] = {}

    @cached_property
    def model_fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def shard(self, k: int, n: int) -> tuple[np.ndarray, int]:
        """Indices of shard ``k`` of ``n`` (a fixed run of whole blocks) and the number of samples before it."""
        start, stop = self.layout.span(*self.blocks(k, n))
        return self.indices[start:stop], start

    def blocks(self, k: int, n: int) -> tuple[int, int]:
        """Blocks [first, stop) of shard ``k`` of ``n``; UsageError when there is no such shard."""
        count = self.layout.count
        if not 1 <= k <= n:
            raise UsageError(f"shard {k}/{n} does not exist: K must be between 1 and N.")
        if n > count:
            raise UsageError(f"{n} shards are too many: the {len(self.indices)} calibration samples make {count} "
                             f"block(s) of {self.layout.block_samples} samples (whole batches of {self.batch}).",
                             note=f"use at most {count} shards")
        return self.layout.shard(k, n)

    def collect(self, k: int = 1, n: int = 1,
                progress: Callable[[int], None] | None = None, passes: "Passes | None" = None,
                keep: "Keep | None" = None) -> Partial:
        """Statistics of shard ``k`` of ``n``, with the positions and folds one pass over the whole split would take
        (``.total()`` of the whole split's gives the summed statistics); ``passes`` runs its blocks as tasks of an
        executor (``calibration/parallel.py``), with the same result. ``keep`` (in this process only) keeps
        tensors per batch for the error-correcting pass (:func:`collect_blocks`)."""
        if passes is not None:
            return passes.blocks(self.model, self.consumers, self.data, self.indices, self.settings, progress,
                                 folds=self.folds, blocks=self.blocks(k, n), landings=self.landings)
        return collect_blocks(self.model, self.consumers, self.data, self.indices, self.settings, progress,
                              folds=self.folds, blocks=self.blocks(k, n), landings=self.landings, keep=keep)

    @property
    def tensors(self) -> list[str]:
        """The tensors the pass computes with the whole network (the consumers' inputs and outputs, the sums)."""
        inputs, outputs = pass_tensors(self.consumers, self.landings or {}, self.settings.guides)
        return list(dict.fromkeys(inputs + outputs))

    @property
    def guides(self) -> list[list[str]]:
        """The settings' (consumer, score map) pairs as a statistics file's header lists them."""
        return [list(pair) for pair in self.settings.guides]

    def data_fingerprint(self, k: int = 1, n: int = 1) -> str:
        """Fingerprint of the samples of shard ``k`` of ``n`` (computed once: it reads them all)."""
        if (k, n) not in self._data_fingerprints:
            self._data_fingerprints[k, n] = data_fingerprint(self.data, self.shard(k, n)[0], self.batch)
        return self._data_fingerprints[k, n]

    def header(self, partial: Partial, k: int = 1, n: int = 1) -> StatsHeader:
        """The header of shard ``k`` of ``n`` with statistics ``partial``."""
        stats = partial.nodes[0].value
        shapes = [[stats[c.node].full.n_features, stats[c.node].full.n_targets] for c in self.consumers]
        return StatsHeader(shapes=shapes, nodes=[[node.first, node.size] for node in partial.nodes],
                           **self.identity(k, n))

    def identity(self, k: int = 1, n: int = 1) -> dict:
        """What shard ``k`` of ``n`` is computed from (:meth:`StatsHeader.identity`)."""
        return {
            "model": self.model_fingerprint, "consumers": [c.node for c in self.consumers],
            "data": self.data_fingerprint(k, n), "indices": indices_fingerprint(self.indices),
            "samples": len(self.shard(k, n)[0]), "total": len(self.indices), "shard": [k, n], "batch": self.batch,
            "seed": self.settings.seed, "max_positions": self.settings.max_positions, "folds": self.folds,
            "provider": self.settings.provider, "blocks": self.layout.count, "format": FORMAT,
            "guides": self.guides,
        }

    def check(self, header: StatsHeader, where: str) -> None:
        """Refuse statistics of another model, split or settings, or without the folds this pass keeps."""
        if header.model != self.model_fingerprint or header.consumers != [c.node for c in self.consumers]:
            raise DataError(f"{where} holds statistics of another model.",
                            note="compute them with 'onnxprune calibrate' on this model")
        ours = {"--seed": self.settings.seed, "--max-positions": self.settings.max_positions or 0,
                "--batch-size": self.batch}
        theirs = {"--seed": header.seed, "--max-positions": header.max_positions or 0, "--batch-size": header.batch}
        for option, value in ours.items():
            if theirs[option] != value:
                raise UsageError(f"{where} was computed with {option} {theirs[option]}; "
                                 f"this run uses {option} {value}.",
                                 note="calibrate and compress need the same calibration options")
        if header.guides != self.guides:
            raise UsageError(f"{where} was computed with score-guided positions on {len(header.guides)} layer(s); "
                             f"this run guides {len(self.settings.guides)}.",
                             note="give calibrate and compress the same --score-positions/--no-score-positions")
        if (header.indices, header.total) != (indices_fingerprint(self.indices), len(self.indices)):
            raise UsageError(f"{where} was computed on another calibration split.",
                             note="use the same --data, --num-samples, --holdout and --seed")
        if self.folds and not header.folds:
            raise UsageError(f"{where} lacks the fold statistics that --independent re-fits need.",
                             note="compute it with 'onnxprune calibrate --independent'")


def write_statistics(path: str | os.PathLike, header: StatsHeader, partial: Partial) -> None:
    """Write the tree nodes of ``partial`` under ``header`` to ``path`` atomically (uncompressed; the sums are not
    copied)."""
    arrays = {"header": np.array(header.to_json())}
    for j, node in enumerate(partial.nodes):
        for i, consumer in enumerate(header.consumers):
            entry = node.value[consumer]
            for part, sums in (("full", entry.full), ("odd", entry.odd)):
                if sums is not None:
                    arrays.update({f"{j}.{i}.{part}.{key}": value for key, value in sums.to_arrays().items()})
            if entry.energy is not None:
                arrays[f"{j}.{i}.energy"] = entry.energy
    with atomic_path(path) as tmp, open(tmp, "wb") as fp:
        np.savez(fp, **arrays)


def read_statistics(path: str | os.PathLike, header: StatsHeader) -> dict[str, ConsumerStats]:
    """The summed statistics of a file of the whole split whose header is ``header``; DataError (one line) when it
    is not readable."""
    partial: Partial = PairwiseSum(header.blocks, merge_blocks)
    try:
        with np.load(path, allow_pickle=False) as archive:
            partial.extend(_nodes(archive, header, folds=True))
        return partial.total()
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


def read_header(path: str | os.PathLike) -> StatsHeader:
    """The header of a statistics file; DataError (one line) when it is not a readable one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return StatsHeader.from_json(str(archive["header"]))
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None


def sum_shards(paths: Sequence[str | os.PathLike], first: FirstPass) -> dict[str, ConsumerStats]:
    """The statistics of ``first`` summed from the files of its N shards, each checked against it, in the fixed
    order of ``blocks.py`` (the same bits as one pass).

    Refuses files of another model, split or settings, shards given twice, missing or of different
    shardings, and shards computed on other samples. Memory holds one file and the tree nodes not yet combined.
    """
    headers = {Path(p): read_header(p) for p in paths}
    for path, header in headers.items():
        first.check(header, str(path))
    ordered = _in_shard_order(headers)
    for path in ordered:
        k, n = headers[path].shard
        if headers[path].data != first.data_fingerprint(k, n):
            raise DataError(f"{path} (shard {k}/{n}) was computed on other calibration samples.",
                            note="use the same --data and preprocessing options as calibrate")
    total: Partial = PairwiseSum(first.layout.count, merge_blocks)
    for path in ordered:
        try:
            with np.load(path, allow_pickle=False) as archive:
                total.extend(_nodes(archive, headers[path], folds=first.folds))
        except _READ_ERRORS as exc:
            raise _unreadable(path, exc) from None
    return total.total()


def _in_shard_order(headers: dict[Path, StatsHeader]) -> list[Path]:
    """The files sorted by shard number; UsageError unless they are the N shards of one split, once each."""
    counts = {h.shard[1] for h in headers.values()}
    if len(counts) > 1:
        listed = ", ".join(f"{p.name} {h.shard[0]}/{h.shard[1]}" for p, h in headers.items())
        raise UsageError(f"the --stats files come from different shardings ({listed}).",
                         note="give the N files of one 'onnxprune calibrate --shard K/N' series")
    n = counts.pop()
    by_shard: dict[int, Path] = {}
    for path, header in headers.items():
        k = header.shard[0]
        if k in by_shard:
            raise UsageError(f"shard {k}/{n} is given twice ({by_shard[k]} and {path}).")
        by_shard[k] = path
    missing = [str(k) for k in range(1, n + 1) if k not in by_shard]
    if missing:
        raise UsageError(f"--stats lacks shard {', '.join(missing)} of {n}.",
                         note="compute it with 'onnxprune calibrate --shard K/N'")
    return [by_shard[k] for k in range(1, n + 1)]


def _nodes(archive, header: StatsHeader, folds: bool) -> Iterator[Node[dict[str, ConsumerStats]]]:
    """The tree nodes of an open archive, one at a time (odd folds of layers wider than ``CURVE_FOLD_COLUMNS`` only
    with ``folds``: a pass without them would not have kept them)."""
    if len(header.shapes) != len(header.consumers):
        raise ValueError("the header lists a shape per consumer")
    for j, (first, size) in enumerate(header.nodes):
        stats = {}
        for i, (consumer, (p, m)) in enumerate(zip(header.consumers, header.shapes)):
            full = _sums(archive, f"{j}.{i}.full.", p, m)
            if full is None:
                raise KeyError(f"no statistics for consumer {consumer!r}")
            odd = _sums(archive, f"{j}.{i}.odd.", p, m) if folds or p <= CURVE_FOLD_COLUMNS else None
            stats[consumer] = ConsumerStats.of(full, odd)
            if f"{j}.{i}.energy" in archive.files:
                stats[consumer].energy = np.asarray(archive[f"{j}.{i}.energy"], dtype=np.float64)
        yield Node(first, size, stats)


def _sums(archive, prefix: str, p: int, m: int) -> LinearStatistics | None:
    names = [name for name in archive.files if name.startswith(prefix)]
    if not names:
        return None
    sums = LinearStatistics.from_arrays({name[len(prefix):]: archive[name] for name in names})
    if (sums.n_features, sums.n_targets) != (p, m):
        raise ValueError(f"statistics {prefix}* of shape ({sums.n_features}, {sums.n_targets}), header says ({p}, {m})")
    return sums


def _unreadable(path: str | os.PathLike, exc: BaseException) -> DataError:
    detail = str(exc).split(". ")[0][:120]
    return DataError(f"cannot read '{path}' as onnxprune statistics ({type(exc).__name__}: {detail}).",
                     note="write statistics files with 'onnxprune calibrate'")
