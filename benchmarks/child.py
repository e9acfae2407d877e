"""Run a command in a child process and measure its wall time and its own peak resident memory."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    peak_mib: float  # the child's peak RSS in MiB (ru_maxrss of that process alone)
    stdout: str
    stderr: str


def run_child(cmd: list[str], timeout_s: float | None = None) -> ChildRun:
    """Run ``cmd``; a child still running after ``timeout_s`` is killed (returncode -9)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = None if timeout_s is None else start + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, wall, usage.ru_maxrss / 1024, out.read(), err.read())


def machine() -> str:
    """One line naming the machine for a results table."""
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def publish(name: str, text: str) -> Path:
    """Write a results page to benchmarks/results/NAME, print it and where it went."""
    out = Path(__file__).resolve().parent / "results" / name
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return out
