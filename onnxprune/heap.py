"""The C heap under numpy's large arrays: what this process has freed, handed back or kept for reuse (glibc only).

glibc maps every allocation over its threshold (32 MiB at most) with its own ``mmap`` and unmaps it when freed, so
each Gram-sized temporary (a product, a centred or cast copy, a fold's difference) is a fresh mapping whose pages
the kernel zeroes on first touch. The error-correcting re-fit makes them by the hundred, stage after stage, of the
same few sizes: in VGG-16's error-correct stage that zeroing was 19 % of the CPU samples (``perf``: clear_page_erms)
and 17 s of system time. :func:`reusing_freed_memory` serves every size from the heap and keeps what is freed for
the next allocation while it lasts: the error-correct stage runs its wide stages that way (``sequential.py``), and
the forked workers of a pool their tasks (the rankings' temporaries). In a calibration pass the kept memory raised
VGG-16's peak by 10 % (2 189 → 2 405 MiB resident) for as much time, so it does not. Elsewhere than glibc every
function here does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from typing import Iterator

_M_TRIM_THRESHOLD = -1   # mallopt's parameters (malloc.h)
_M_MMAP_MAX = -4
_KEEP = 2**31 - 1        # free bytes at the heap's top before glibc trims it, while reusing: the most mallopt takes
_TRIM_AFTER = 64 << 20   # after: what glibc's own threshold reaches once a 32 MiB mapping has been freed
_MAPPINGS = 65536        # glibc's default bound on the number of mapped allocations
_DEPTH: list[bool] = []  # the contexts entered and not left: only the outermost sets and restores glibc's settings


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (``mallopt``, ``malloc_trim``, ``mallinfo2``), looked up once (``find_library``
    runs ``ldconfig``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "gnu_get_libc_version"):
            return None
    except OSError:
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def return_free_heap() -> bool:
    """Hand the memory this process has freed but still holds back to the system (``malloc_trim``), as before
    forking workers; False where there is no glibc.

    After calibration the heap keeps the freed batches' pages, and forked workers serve their Gram-sized
    temporaries from that inherited heap (most likely paying a copy-on-write fault per page; measured, not traced).
    The YOLOv8n layout detector's 43 ranking jobs took 19.5–22 s of worker time inside compress against 15.5 s
    forked from a small process, and 16.5–17.0 s with the heap trimmed first (solve stage 10.1–11.5 → 8.6–8.8 s);
    the results are the same bytes."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def free_heap() -> int | None:
    """Bytes of the heap that are free but still held (``mallinfo2``), or None where it cannot say."""
    mallinfo2 = _mallinfo2()
    return None if mallinfo2 is None else int(mallinfo2().fordblks)


@functools.lru_cache(maxsize=1)
def _mallinfo2():
    """glibc's ``mallinfo2`` returning its struct (size_t fields), or None."""

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2


@contextlib.contextmanager
def reusing_freed_memory(hand_back: bool = True) -> Iterator[bool]:
    """While inside, every allocation comes from the heap and freed memory stays there for the next one (no
    ``mmap`` per large array, no trimming); on leaving, large allocations are mapped again and, with ``hand_back``,
    the free memory is handed back (``malloc_trim``: milliseconds per hundred MB held). Yields whether glibc took
    it. Process-wide: it holds for every thread, and for workers forked inside; a context entered inside another
    changes nothing. Threads' own arenas still map what exceeds their 64 MiB heaps."""
    libc = _glibc()
    outermost = not _DEPTH
    if outermost:
        took = libc is not None and bool(libc.mallopt(_M_MMAP_MAX, 0))
        took = took and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
    else:
        took = _DEPTH[-1]
    _DEPTH.append(took)
    try:
        yield took
    finally:
        _DEPTH.pop()
        if libc is not None and outermost:
            libc.mallopt(_M_MMAP_MAX, _MAPPINGS)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
            if hand_back:
                libc.malloc_trim(0)
