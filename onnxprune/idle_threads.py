"""OpenBLAS's idle threads: whether they spin or sleep between calls, which OpenBLAS reads from the environment once,
when numpy loads it.

After every threaded call OpenBLAS's threads spin for 2^28 cycles (about 0.1 s) waiting for the next one. Calibration
and the error-correcting re-fits alternate threaded Gram products with ONNX Runtime runs on the same cores, so each
product's threads spun beside the next run's threads: on 2 cores the YOLOv8n layout detector's error-correcting stage
took 14.8–15.9 s against 12.9–14.7 s with the threads sleeping at once (four runs each, ``OPENBLAS_THREAD_TIMEOUT=4``,
OpenBLAS's shortest wait), the same bytes. The command line sets it (:func:`sleep_when_idle`); a program that uses
the library sets it before it imports numpy.
"""
from __future__ import annotations

import os

VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
SHORTEST = "4"   # OpenBLAS waits 2^N cycles for work before its threads sleep; 4 is the least it accepts


def sleep_when_idle() -> None:
    """Let OpenBLAS's threads sleep as soon as a call ends, unless the environment already says how long they wait.
    In effect only where OpenBLAS is not loaded yet (before numpy is imported); processes started from here inherit
    it."""
    os.environ.setdefault(VARIABLE, SHORTEST)
