"""The command line's idle OpenBLAS threads sleep, not spin beside ONNX Runtime (onnxprune/idle_threads.py)."""
from __future__ import annotations

import os
import subprocess
import sys

from onnxprune.idle_threads import VARIABLE

# a threaded product, then the process's CPU time while it sleeps: its BLAS threads' spinning, if they spin
_IDLE_CPU = """
import resource, time
import onnxprune.cli
import numpy as np
a = np.random.default_rng(0).random((800, 800))
a @ a
before = resource.getrusage(resource.RUSAGE_SELF)
time.sleep(0.3)
after = resource.getrusage(resource.RUSAGE_SELF)
print(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
"""


def _python(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != VARIABLE} | env
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_command_line_sets_the_shortest_wait_unless_the_environment_has_one():
    code = f"import onnxprune.cli, os; print(os.environ['{VARIABLE}'])"
    assert _python(code) == "4"
    assert _python(code, **{VARIABLE: "20"}) == "20"


def test_after_a_threaded_product_the_blas_threads_take_no_cpu_time():
    """OpenBLAS's default wait spins its threads for 2^28 cycles (about 0.1 s of a core per thread) after every call."""
    assert float(_python(_IDLE_CPU, OPENBLAS_NUM_THREADS="2")) < 0.03
