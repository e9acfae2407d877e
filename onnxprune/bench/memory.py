"""Memory probes: the process's peak resident set (host) and the GPU's used memory (device).

Host figures are process-wide: everything the process allocated counts, which is why ``benchmark``
measures each configuration in a fresh worker process.
Device figures are device-wide: other processes on the same GPU count too.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Optional, Tuple

__all__ = ["reset_peak_rss", "read_rss", "read_peak_rss", "host_memory_source", "device_memory_used"]

_STATUS = "/proc/self/status"


def _status_kb(field: str) -> Optional[int]:
    try:
        with open(_STATUS, "r", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); True on success."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def read_rss() -> Optional[int]:
    """Current resident set size in bytes (VmRSS), or None where /proc is missing."""
    return _status_kb("VmRSS")


def read_peak_rss() -> Optional[int]:
    """Peak resident set size in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    except (ImportError, OSError):
        return None


def host_memory_source() -> str:
    return "VmHWM" if _status_kb("VmHWM") is not None else "ru_maxrss"


_NVML_STATE: dict = {}


def _nvml_used(device_id: int) -> Optional[int]:
    if _NVML_STATE.get("failed"):
        return None
    try:
        import pynvml  # type: ignore[import-not-found]

        if not _NVML_STATE.get("init"):
            pynvml.nvmlInit()
            _NVML_STATE["init"] = True
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # noqa: BLE001 - missing module, driver or device
        _NVML_STATE["failed"] = True
        return None


def _smi_used(device_id: int) -> Optional[int]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(device_id)],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0])) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_memory_used(device_id: int = 0) -> Tuple[Optional[int], Optional[str]]:
    """(bytes used on the GPU, source) with source ``pynvml`` or ``nvidia-smi``; (None, None) if neither works.

    The GPU index is NVML's (nvidia-smi's) numbering, which differs from CUDA's when CUDA_VISIBLE_DEVICES reorders.
    """
    used = _nvml_used(device_id)
    if used is not None:
        return used, "pynvml"
    used = _smi_used(device_id)
    if used is not None:
        return used, "nvidia-smi"
    return None, None
