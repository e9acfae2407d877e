"""First-pass statistics on disk: the files ``onnxprune calibrate`` writes and ``compress --stats``/``--cache`` read.

A statistics file is an uncompressed .npz: ``header`` (JSON, :class:`StatsHeader`: what the statistics were
computed from) and, for consumer i of the header's list, its raw sums ``i.full.KEY`` and, where the odd fold was
kept, ``i.odd.KEY`` (the keys of :meth:`LinearStatistics.to_arrays`). Statistics add (entropic-regression.md §2),
so the N shards of one calibration set are summed; a file of another model, other samples, another split or other
settings is refused with one line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Consumer
from onnxprune.atomic import atomic_path
from onnxprune.calibration.collect import CalibrationSettings, ConsumerStats, calibration_batch, collect_statistics
from onnxprune.calibration.fingerprint import data_fingerprint, indices_fingerprint, model_fingerprint
from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import DataError, UsageError
from onnxprune.residual import Landing
from onnxprune.solvers.statistics import LinearStatistics

FORMAT = "onnxprune-statistics/1"
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
    folds: bool                 # odd-fold statistics kept (for compress --independent)
    provider: str
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StatsHeader":
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} header")
        return cls(**raw)

    def identity(self) -> dict:
        """Every field but the consumer shapes: what the statistics were computed from."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "shapes"}


class FirstPass:
    """Compress's first calibration pass: statistics of ``consumers`` of the float32 ``model`` over the calibration
    split ``indices`` of ``data``, in one pass or in shards of whole batches that sum to the same statistics
    (``landings``: the consumers writing into a residual sum, whose gains the pass measures)."""

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
        self._data_fingerprints: dict[tuple[int, int], str] = {}

    @cached_property
    def model_fingerprint(self) -> str:
        return model_fingerprint(self.model)

    def shard(self, k: int, n: int) -> tuple[np.ndarray, int]:
        """Indices of shard ``k`` of ``n`` (a fixed run of whole batches) and the number of samples before it."""
        batches = -(-len(self.indices) // self.batch)
        if not 1 <= k <= n:
            raise UsageError(f"shard {k}/{n} does not exist: K must be between 1 and N.")
        if n > batches:
            raise UsageError(f"{n} shards are too many: the {len(self.indices)} calibration samples make {batches} "
                             f"batch(es) of {self.batch}.",
                             note=f"use at most {batches} shards or a smaller --batch-size")
        start = (k - 1) * batches // n * self.batch
        stop = min(k * batches // n * self.batch, len(self.indices))
        return self.indices[start:stop], start

    def collect(self, k: int = 1, n: int = 1,
                progress: Callable[[int], None] | None = None) -> dict[str, ConsumerStats]:
        """Statistics of shard ``k`` of ``n``, with the positions and folds one pass over the whole split would take."""
        indices, offset = self.shard(k, n)
        return collect_statistics(self.model, self.consumers, self.data, indices, self.settings, progress,
                                  folds=self.folds, offset=offset, fold_samples=len(self.indices),
                                  landings=self.landings)

    def data_fingerprint(self, k: int = 1, n: int = 1) -> str:
        """Fingerprint of the samples of shard ``k`` of ``n`` (computed once: it reads them all)."""
        if (k, n) not in self._data_fingerprints:
            self._data_fingerprints[k, n] = data_fingerprint(self.data, self.shard(k, n)[0], self.batch)
        return self._data_fingerprints[k, n]

    def header(self, stats: dict[str, ConsumerStats], k: int = 1, n: int = 1) -> StatsHeader:
        """The header of shard ``k`` of ``n`` with statistics ``stats``."""
        shapes = [[stats[c.node].full.n_features, stats[c.node].full.n_targets] for c in self.consumers]
        return StatsHeader(shapes=shapes, **self.identity(k, n))

    def identity(self, k: int = 1, n: int = 1) -> dict:
        """What shard ``k`` of ``n`` is computed from (:meth:`StatsHeader.identity`)."""
        return {
            "model": self.model_fingerprint, "consumers": [c.node for c in self.consumers],
            "data": self.data_fingerprint(k, n), "indices": indices_fingerprint(self.indices),
            "samples": len(self.shard(k, n)[0]), "total": len(self.indices), "shard": [k, n], "batch": self.batch,
            "seed": self.settings.seed, "max_positions": self.settings.max_positions, "folds": self.folds,
            "provider": self.settings.provider, "format": FORMAT,
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
        if (header.indices, header.total) != (indices_fingerprint(self.indices), len(self.indices)):
            raise UsageError(f"{where} was computed on another calibration split.",
                             note="use the same --data, --num-samples, --holdout and --seed")
        if self.folds and not header.folds:
            raise UsageError(f"{where} lacks the fold statistics that --independent re-fits need.",
                             note="compute it with 'onnxprune calibrate --independent'")


def write_statistics(path: str | os.PathLike, header: StatsHeader, stats: dict[str, ConsumerStats]) -> None:
    """Write ``stats`` under ``header`` to ``path`` atomically (uncompressed; the sums are not copied)."""
    arrays = {"header": np.array(header.to_json())}
    for i, node in enumerate(header.consumers):
        for part, sums in (("full", stats[node].full), ("odd", stats[node].odd)):
            if sums is not None:
                arrays.update({f"{i}.{part}.{key}": value for key, value in sums.to_arrays().items()})
        if stats[node].energy is not None:
            arrays[f"{i}.energy"] = stats[node].energy
    with atomic_path(path) as tmp, open(tmp, "wb") as fp:
        np.savez(fp, **arrays)


def read_statistics(path: str | os.PathLike, header: StatsHeader) -> dict[str, ConsumerStats]:
    """The statistics of a file whose header is ``header``; DataError (one line) when it is not readable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return dict(_consumers(archive, header, folds=True))
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
    """The statistics of ``first`` summed from the files of its N shards, each checked against it.

    Refuses files of another model, split or settings, shards given twice, missing or of different
    shardings, and shards computed on other samples. Memory holds the sum and one consumer of one file.
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
    total: dict[str, ConsumerStats] = {}
    for path in ordered:
        try:
            with np.load(path, allow_pickle=False) as archive:
                for node, entry in _consumers(archive, headers[path], folds=first.folds):
                    if node not in total:
                        total[node] = entry
                        continue
                    total[node].full.merge(entry.full)
                    if entry.odd is not None:
                        total[node].odd.merge(entry.odd)
                    if entry.energy is not None:
                        total[node].energy += entry.energy
        except _READ_ERRORS as exc:
            raise _unreadable(path, exc) from None
    return total


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


def _consumers(archive, header: StatsHeader, folds: bool) -> Iterator[tuple[str, ConsumerStats]]:
    """Each consumer's statistics from an open archive, one at a time (odd folds only with ``folds``)."""
    if len(header.shapes) != len(header.consumers):
        raise ValueError("the header lists a shape per consumer")
    for i, (node, (p, m)) in enumerate(zip(header.consumers, header.shapes)):
        full = _sums(archive, f"{i}.full.", p, m)
        if full is None:
            raise KeyError(f"no statistics for consumer {node!r}")
        entry = ConsumerStats.of(full, _sums(archive, f"{i}.odd.", p, m) if folds else None)
        if f"{i}.energy" in archive.files:
            entry.energy = np.asarray(archive[f"{i}.energy"], dtype=np.float64)
        yield node, entry


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
