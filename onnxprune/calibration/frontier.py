"""Per-batch tensors kept between the stages of the error-correcting re-fit, within a memory budget.

The error-correcting pass runs each stage's segment of the original and of the pruned network once per
calibration batch (``calibration/segments.py``). What a later segment reads or a later stage wants is kept here,
per batch: in memory while the kept arrays fit ``budget`` bytes, else in memory-mapped ``.npy`` files of a
temporary folder, removed when the store is closed (also on error or Ctrl-C: use it as a context manager).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Hashable, Mapping

import numpy as np

Key = Hashable
BUDGET_SHARE = 0.5  # of the memory available when the run starts, by default


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def default_budget() -> int:
    """Half the memory available now (1 GiB where that cannot be read)."""
    free = available_memory()
    return int(BUDGET_SHARE * free) if free else 1 << 30


class FrontierStore:
    """Per batch number, a mapping of keys to arrays; arrays past ``budget`` bytes live in memory-mapped files.

    ``set(batch, entry)`` replaces a batch's entry: arrays it no longer holds are freed (their files removed),
    arrays it keeps (the same objects) stay where they are, new ones go to memory or, over the budget, to disk.
    """

    def __init__(self, budget: int | None = None, folder: str | os.PathLike | None = None):
        self.budget = default_budget() if budget is None else int(budget)
        self._parent = folder
        self._folder: str | None = None
        self._entries: dict[int, dict[Key, np.ndarray]] = {}
        self._files: dict[int, str] = {}    # id of a memory-mapped array -> its file
        self._count = 0
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.peak_memory_bytes = 0
        self.peak_disk_bytes = 0

    # -- the mapping
    def get(self, batch: int) -> dict[Key, np.ndarray]:
        """The arrays kept for ``batch`` (empty when none)."""
        return dict(self._entries.get(batch, {}))

    def set(self, batch: int, entry: Mapping[Key, np.ndarray]) -> None:
        """Keep exactly ``entry`` for ``batch``."""
        old = {id(a): a for a in self._entries.pop(batch, {}).values()}
        placed = dict(old)   # id of an array given -> the array kept for it (one copy however many keys share it)
        new: dict[Key, np.ndarray] = {}
        for key, array in entry.items():
            if id(array) not in placed:
                placed[id(array)] = self._place(np.asarray(array))
            new[key] = placed[id(array)]
        kept = {id(a) for a in new.values()}
        for ident, array in old.items():
            if ident not in kept:
                self._free(array)
        if new:
            self._entries[batch] = new

    def batches(self) -> list[int]:
        return sorted(self._entries)

    def clear(self) -> None:
        for batch in list(self._entries):
            self.set(batch, {})

    # -- placement
    def _place(self, array: np.ndarray) -> np.ndarray:
        if self.memory_bytes + array.nbytes <= self.budget or array.nbytes == 0:
            self.memory_bytes += array.nbytes
            self.peak_memory_bytes = max(self.peak_memory_bytes, self.memory_bytes)
            return array
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="onnxprune-frontier-", dir=self._parent)
        path = os.path.join(self._folder, f"{self._count}.npy")
        self._count += 1
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
        mapped[...] = array
        mapped.flush()
        del mapped
        spilled = np.load(path, mmap_mode="r")
        self._files[id(spilled)] = path
        self.disk_bytes += array.nbytes
        self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes)
        return spilled

    def _free(self, array: np.ndarray) -> None:
        path = self._files.pop(id(array), None)
        if path is None:
            self.memory_bytes -= array.nbytes
            return
        self.disk_bytes -= array.nbytes
        try:
            os.unlink(path)
        except OSError:
            pass

    # -- lifetime
    @property
    def folder(self) -> str | None:
        """The temporary folder of the spilled arrays (None until one is spilled)."""
        return self._folder

    def close(self) -> None:
        """Drop every array and remove the temporary folder."""
        self._entries.clear()
        self._files.clear()
        self.memory_bytes = self.disk_bytes = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def report(self) -> dict:
        """Budget and peaks in MiB, for the report's ``memory`` key."""
        mib = 1 << 20
        return {"budget_mib": round(self.budget / mib, 1), "peak_in_memory_mib": round(self.peak_memory_bytes / mib, 1),
                "peak_on_disk_mib": round(self.peak_disk_bytes / mib, 1)}

    def __enter__(self) -> "FrontierStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
