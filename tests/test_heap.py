"""The error-correct stage's large temporaries reuse freed memory instead of fresh mappings (onnxprune/heap.py)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

# page faults of touching a fresh 64 MiB array after an equal one was freed, outside and inside the context (after
# an inner context came and went); then
# the resident memory (MiB) inside the context after freeing 256 MiB, and after leaving it
_FAULTS = """
import resource
import numpy as np
from onnxprune.heap import reusing_freed_memory, return_free_heap

def faults_of_a_second_array():
    a = np.ones(8 << 20)      # 64 MiB: over glibc's largest mmap threshold
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(8 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10

outside = faults_of_a_second_array()
with reusing_freed_memory() as took:
    with reusing_freed_memory():   # an inner context leaves the outer one's settings as they are
        pass
    inside = faults_of_a_second_array()
    big = np.ones(32 << 20)   # 256 MiB
    del big
    held = rss()
left = rss()
print(took, outside, inside, held, left)
"""


def _run() -> list[str]:
    return subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True).stdout.split()


def test_inside_the_context_a_freed_array_serves_the_next_without_page_faults():
    took, outside, inside, _, _ = _run()
    assert took == "True"
    assert int(outside) >= 16          # 64 MiB mapped afresh: 32 huge pages, or 16 384 small ones
    assert int(inside) <= 4


def test_leaving_the_context_hands_the_kept_memory_back():
    _, _, _, held, left = _run()
    assert int(held) - int(left) >= 200   # the freed 256 MiB stayed resident inside, and went back on leaving
