"""Measure one (model, provider, batch) configuration; run as ``python -m onnxprune.bench.worker`` in a fresh process.

The job arrives as JSON on stdin and names a file for the result, so nothing onnxruntime prints can
corrupt it. A fresh process per configuration keeps the process-wide peak RSS of one measurement
out of the next one. ``run_job`` is also called in-process by ``benchmark(..., isolate=False)``.
"""
from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from typing import Any, Optional

__all__ = ["run_job", "main"]


def _load_feeds(path: str, names: list) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=True) as data:
        return {name: data[f"arr_{i}"] for i, name in enumerate(names)}


def run_job(job: dict) -> dict:
    """Create the session, warm up, time the runs; return a dict of measurements (``samples_ns``: each timed run)."""
    from onnxprune.bench import memory
    from onnxprune.bench.inputs import random_feeds
    from onnxprune.bench.providers import ProviderSpec, open_session

    spec = ProviderSpec.from_dict(job["provider"])
    threads: Optional[int] = job.get("threads")
    runs: Optional[int] = job.get("runs")
    seconds: Optional[float] = job.get("seconds")
    warmup: int = int(job.get("warmup", 0))

    # Inputs first, so that the memory figures are those of the session and its runs (plus outputs).
    if job.get("feeds_path"):
        feeds = _load_feeds(job["feeds_path"], job["feed_names"])
    else:
        feeds = random_feeds(job["shapes"], job["dtypes"], seed=int(job.get("seed", 0)))

    gc.collect()
    was_reset = memory.reset_peak_rss()
    rss_before = memory.read_rss()
    device_before, device_source = (memory.device_memory_used(spec.device_id) if spec.is_gpu else (None, None))

    t0 = time.perf_counter()
    session, fallback_reason = open_session(job["model"], spec, threads)
    session_ms = (time.perf_counter() - t0) * 1e3
    peak_session = memory.read_peak_rss()
    device_session = memory.device_memory_used(spec.device_id)[0] if device_source else None

    run = session.run
    output_names = [o.name for o in session.get_outputs()]
    out: Any = None
    for _ in range(warmup):
        out = None
        out = run(output_names, feeds)

    samples: list[int] = []
    gc.collect()
    gc_enabled = gc.isenabled()
    gc.disable()
    clock = time.perf_counter_ns
    try:
        if seconds is not None:
            deadline = clock() + int(seconds * 1e9)
            while True:
                out = None
                start = clock()
                out = run(output_names, feeds)
                stop = clock()
                samples.append(stop - start)
                if stop >= deadline:
                    break
        else:
            for _ in range(int(runs or 0)):
                out = None
                start = clock()
                out = run(output_names, feeds)
                stop = clock()
                samples.append(stop - start)
    finally:
        if gc_enabled:
            gc.enable()
    del out

    peak_end = memory.read_peak_rss()
    device_end = memory.device_memory_used(spec.device_id)[0] if device_source else None

    def delta(after, before):
        return None if after is None or before is None else max(0, int(after) - int(before))

    device_bytes = None
    if device_before is not None:
        device_peak = max(v for v in (device_session, device_end, device_before) if v is not None)
        device_bytes = delta(device_peak, device_before)
    active = list(session.get_providers())
    return {
        "ok": True,
        "provider": active[0] if active else spec.name,
        "providers_active": active,
        "fallback_reason": fallback_reason,
        "session_create_ms": session_ms,
        "samples_ns": samples,
        "host_session_bytes": delta(peak_session, rss_before),
        "host_peak_bytes": delta(peak_end, rss_before),
        "host_source": memory.host_memory_source() + ("" if was_reset else " (peak not reset)"),
        "device_bytes": device_bytes,
        "device_source": device_source,
    }


def _error_dict(exc: BaseException) -> dict:
    from onnxprune.errors import OnnxPruneError

    if isinstance(exc, OnnxPruneError):
        return {"ok": False, "error": {"type": type(exc).__name__, "message": exc.message, "note": exc.note}}
    return {"ok": False, "bug": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        result = run_job(job)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it there
        result = _error_dict(exc)
    with open(job["result_path"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
