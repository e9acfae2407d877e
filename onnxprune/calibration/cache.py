"""``compress --cache DIR``: first-pass statistics and channel rankings kept between runs, so another target skips
calibration and the solve.

An entry is a statistics file (:mod:`onnxprune.calibration.store`) named by the hash of what it was computed
from: the model, the calibration samples, the split and the calibration settings. Beside it, in ``rankings/``, the
channel order, scores and error curve of every group ranked on those statistics, named by the hash of that and of
what else a ranking depends on (the solver settings, the backend, the frozen channels, the onnxprune version): none of
it depends on the target. Entries are written atomically; an unreadable or mismatching entry is ignored with a warning
and computed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from onnxprune.atomic import atomic_path
from onnxprune.calibration.collect import ConsumerStats, Partial
from onnxprune.calibration.store import FirstPass, read_header, read_statistics, write_statistics
from onnxprune.errors import DataError, OnnxPruneWarning, UsageError


class StatsCache:
    """A folder of first-pass statistics (created when missing)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"--cache '{self.folder}' is a file, not a folder.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the --cache folder '{self.folder}' ({exc.strerror}).") from None

    def path(self, first: FirstPass) -> Path:
        """Where the statistics of ``first`` are kept."""
        return self.folder / f"{_digest(_canonical(first.identity()))[:32]}.npz"

    def get(self, first: FirstPass) -> dict[str, ConsumerStats] | None:
        """The cached statistics of ``first``, or None (with a warning when the entry is unusable)."""
        path = self.path(first)
        if not path.exists():
            return None
        try:
            header = read_header(path)
            if header.identity() == first.identity():
                return read_statistics(path, header)
            problem = f"the cache entry '{path}' was computed from another model, data or options."
        except DataError as exc:
            problem = exc.message
        warnings.warn(f"{problem} Ignored: the cache entry is computed again.", OnnxPruneWarning, stacklevel=2)
        return None

    def put(self, first: FirstPass, partial: Partial) -> None:
        """Keep the statistics ``partial`` of the whole split for ``first`` (atomically; a failed write only warns)."""
        try:
            write_statistics(self.path(first), first.header(partial), partial)
        except OSError as exc:
            warnings.warn(f"could not write the cache entry in '{self.folder}' ({exc}).", OnnxPruneWarning,
                          stacklevel=2)

    def _rankings_entry(self, first: FirstPass, key: Mapping) -> tuple[Path, str]:
        """Where the rankings made on the statistics of ``first`` under ``key`` (what else they depend on) are kept,
        and the identity the entry carries."""
        identity = _canonical([first.identity(), key])
        return self.folder / "rankings" / f"{_digest(identity)[:32]}.npz", identity

    def get_rankings(self, first: FirstPass, key: Mapping,
                     sizes: Mapping[int, int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """The cached (scores, order, curve) per ranked group id, or None (with a warning when the entry is unusable);
        ``sizes``: every group's channel count by id."""
        path, expected = self._rankings_entry(first, key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                identity = str(entry["identity"])
                ranked = {int(g): (entry[f"scores_{g}"], entry[f"order_{g}"], entry[f"curve_{g}"])
                          for g in entry["groups"]}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            problem = "not a readable rankings file"
        else:
            if identity != expected:
                problem = "made from other statistics or settings"
            elif any(g not in sizes or [a.shape for a in r] != [(sizes[g],), (sizes[g],), (sizes[g] + 1,)]
                     for g, r in ranked.items()):
                problem = "they do not fit this model's channel groups"
            else:
                return ranked
        warnings.warn(f"cannot use the cached rankings '{path}' ({problem}). Ignored: they are computed again.",
                      OnnxPruneWarning, stacklevel=2)
        return None

    def put_rankings(self, first: FirstPass, key: Mapping,
                     ranked: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Keep the (scores, order, curve) of each group id in ``ranked`` (atomically; a failed write only warns)."""
        path, identity = self._rankings_entry(first, key)
        arrays = {f"{name}_{g}": a for g, r in ranked.items() for name, a in zip(("scores", "order", "curve"), r)}
        try:
            path.parent.mkdir(exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as out:
                np.savez(out, identity=np.array(identity),
                         groups=np.array(sorted(ranked), dtype=np.int64), **arrays)
        except OSError as exc:
            warnings.warn(f"could not write the cached rankings in '{self.folder}' ({exc}).", OnnxPruneWarning,
                          stacklevel=2)


def _canonical(value) -> str:
    """``value`` as JSON with sorted keys; what JSON has no type for (a numpy scalar in the settings) as its str."""
    return json.dumps(value, sort_keys=True, default=str)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
