"""Result objects of ``benchmark`` and their JSON form.

Units are in the key names: ``*_ms`` milliseconds, ``*_bytes`` bytes, ``*_mb`` megabytes (10^6 bytes),
``throughput_samples_per_s`` samples per second (batch / mean latency).
"""
from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = [
    "LatencyStats",
    "MemoryStats",
    "RunResult",
    "BenchResult",
    "UNITS",
    "to_document",
    "write_json",
    "check_json_path",
]

MB = 1_000_000

UNITS = {
    "latency": "ms (milliseconds per session.run call)",
    "throughput": "samples/s (batch / mean latency)",
    "memory": "bytes (*_bytes) and MB = 10^6 bytes (*_mb)",
    "file_size": "bytes (*_bytes) and MB = 10^6 bytes (*_mb), external data included",
    "params": "count of float parameters",
    "macs": "multiply-adds per sample (Conv, ConvTranspose, Gemm, MatMul)",
}


def _mb(value: Optional[int]) -> Optional[float]:
    return None if value is None else round(value / MB, 3)


@dataclass
class LatencyStats:
    """Per-run latency over ``runs`` timed runs, in milliseconds; percentiles are not trimmed."""

    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int]) -> "LatencyStats":
        import numpy as np

        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            runs=int(ms.size),
            mean_ms=float(ms.mean()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            std_ms=float(ms.std()),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MemoryStats:
    """Memory added by creating the session and running it.

    ``host_*``: increase of the process's peak RSS over its RSS just before the session was created
    (``host_source`` says how it was read; process-wide). ``device_*``: increase of the GPU's used memory
    (``device_source``: ``pynvml`` or ``nvidia-smi``; device-wide), GPU providers only.
    ``isolated``: measured in a fresh worker process (False: in the caller's process, where earlier work
    may already have raised the peak).
    """

    host_session_bytes: Optional[int] = None
    host_peak_bytes: Optional[int] = None
    host_source: Optional[str] = None
    device_bytes: Optional[int] = None
    device_source: Optional[str] = None
    isolated: bool = True

    @property
    def peak_bytes(self) -> Optional[int]:
        """The figure the table shows: device memory for GPU runs where known, host peak otherwise."""
        return self.device_bytes if self.device_bytes is not None else self.host_peak_bytes

    def to_dict(self) -> dict:
        return {
            "host_session_bytes": self.host_session_bytes,
            "host_session_mb": _mb(self.host_session_bytes),
            "host_peak_bytes": self.host_peak_bytes,
            "host_peak_mb": _mb(self.host_peak_bytes),
            "host_source": self.host_source,
            "device_bytes": self.device_bytes,
            "device_mb": _mb(self.device_bytes),
            "device_source": self.device_source,
            "isolated": self.isolated,
        }


@dataclass
class RunResult:
    """One (model, provider, batch) configuration. ``status`` is ``ok`` or ``skipped`` (see ``note``)."""

    provider_requested: str
    provider: str
    batch: int
    status: str = "ok"
    note: Optional[str] = None
    fallback: bool = False
    providers_active: List[str] = field(default_factory=list)
    threads: Optional[int] = None
    warmup_runs: int = 0
    rounds: int = 1
    input_shapes: Dict[str, List[int]] = field(default_factory=dict)
    session_create_ms: Optional[float] = None
    latency: Optional[LatencyStats] = None
    memory: MemoryStats = field(default_factory=MemoryStats)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def p50_ms(self) -> Optional[float]:
        """Median latency in ms; None when the configuration was skipped."""
        return self.latency.p50_ms if self.ok and self.latency else None

    @property
    def throughput(self) -> Optional[float]:
        """Samples per second: batch / mean latency."""
        if self.latency is None or self.latency.mean_ms <= 0:
            return None
        return self.batch / (self.latency.mean_ms / 1e3)

    def to_dict(self) -> dict:
        return {
            "provider_requested": self.provider_requested,
            "provider": self.provider,
            "fallback": self.fallback,
            "providers_active": list(self.providers_active),
            "batch": self.batch,
            "status": self.status,
            "note": self.note,
            "threads": self.threads,
            "inter_op_threads": 1,
            "warmup_runs": self.warmup_runs,
            "rounds": self.rounds,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "session_create_ms": self.session_create_ms,
            "latency": self.latency.to_dict() if self.latency else None,
            "throughput_samples_per_s": self.throughput,
            "memory": self.memory.to_dict(),
        }


@dataclass
class BenchResult:
    """All configurations of one model, with its size and counts (``macs``/``params`` None if uncountable)."""

    model: str
    file_bytes: int
    params: Optional[int]
    macs: Optional[int]
    runs: List[RunResult] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.model).name

    def find(self, provider_requested: str, batch: int) -> Optional[RunResult]:
        for run in self.runs:
            if run.provider_requested == provider_requested and run.batch == batch:
                return run
        return None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_name": self.name,
            "file_bytes": self.file_bytes,
            "file_mb": _mb(self.file_bytes),
            "params": self.params,
            "macs": self.macs,
            "notes": list(self.notes),
            "results": [run.to_dict() for run in self.runs],
        }


def to_document(results: Sequence[BenchResult], settings: Optional[Dict[str, Any]] = None) -> dict:
    """The JSON document ``onnxprune bench --json`` writes: environment, settings, units and results."""
    import onnxruntime as ort

    from onnxprune import __version__

    return {
        "tool": "onnxprune bench",
        "onnxprune_version": __version__,
        "onnxruntime_version": ort.__version__,
        "host": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "available_providers": list(ort.get_available_providers()),
        },
        "settings": dict(settings or {}),
        "units": dict(UNITS),
        "models": [r.to_dict() for r in results],
    }


def check_json_path(path: "str | os.PathLike") -> Path:
    """Reject an output path whose folder does not exist or is not writable, before any work is done."""
    from onnxprune.atomic import check_destination

    return check_destination(path, "--json", "results.json")


def write_json(path: "str | os.PathLike", document: dict) -> Path:
    """Write ``document`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    from onnxprune.atomic import atomic_path

    out = check_json_path(path)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return out
