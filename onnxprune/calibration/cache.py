"""``compress --cache DIR``: first-pass statistics kept between runs, so another target skips calibration.

An entry is a statistics file (:mod:`onnxprune.calibration.store`) named by the hash of what it was computed
from: the model, the calibration samples, the split and the calibration settings. Entries are written
atomically; an unreadable or mismatching entry is ignored with a warning and computed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

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
        key = hashlib.sha256(json.dumps(first.identity(), sort_keys=True).encode()).hexdigest()
        return self.folder / f"{key[:32]}.npz"

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
