"""Plain-text side-by-side table of benchmark results (about 100 columns wide)."""
from __future__ import annotations

import textwrap
from typing import List, Optional, Sequence

from onnxprune.bench.results import MB, BenchResult, RunResult

__all__ = ["format_table"]

_SHORT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "trt"}


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value < 100:
        return f"{value:.2f}"
    if value < 100_000:
        return f"{value:.1f}" if value < 10_000 else f"{value:.0f}"
    return _si(value)


def _mb(value: Optional[int]) -> str:
    if value is None:
        return "-"
    mb = value / MB
    if mb < 10:
        return f"{mb:.2f}"
    if mb < 1000:
        return f"{mb:.1f}"
    return f"{mb:.0f}"


def _si(value: Optional[float]) -> str:
    if value is None:
        return "-"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            scaled = value / factor
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.0f}"


def _ratio(this: Optional[float], base: Optional[float]) -> str:
    if this is None or base is None or base == 0:
        return "-"
    ratio = this / base
    if ratio < 0.1:
        return f"{ratio:.2g}"
    if ratio < 10:
        return f"{ratio:.2f}"
    if ratio < 100:
        return f"{ratio:.1f}"
    return f"{ratio:.0f}"


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    keep = width - 1
    head = keep // 2
    return text[:head] + "~" + text[len(text) - (keep - head):]


def _display(name: str) -> str:
    return name[:-5] if name.lower().endswith(".onnx") and len(name) > 5 else name


def _provider_label(run: RunResult) -> str:
    label = _SHORT.get(run.provider, run.provider)
    return label + "*" if run.fallback else label


def _throughput(run: Optional[RunResult]) -> Optional[float]:
    return run.throughput if run is not None and run.ok else None


def _p50(run: Optional[RunResult]) -> Optional[float]:
    return run.latency.p50_ms if run is not None and run.ok and run.latency else None


def format_table(results: Sequence[BenchResult], *, model_width: int = 18, width: int = 100) -> str:
    """One row per (model, provider, batch); with two models or more, ratios against the first model.

    Ratios compare the same requested provider and batch: ``lat x`` = p50 / p50 of the first model,
    ``thr x`` = throughput / its throughput, ``size x`` = file size / its file size.
    """
    if not results:
        return "(no results)\n"
    compare = len(results) >= 2
    base = results[0]
    headers = ["model", "prov", "batch", "p50", "p90", "p99", "thrpt", "peak", "file", "params", "MACs"]
    units = ["", "", "", "ms", "ms", "ms", "1/s", "MB", "MB", "", ""]
    right = [False, False] + [True] * 9
    if compare:
        headers += ["lat", "thr", "size"]
        units += ["x", "x", "x"]
        right += [True, True, True]

    rows: List[List[str]] = []
    notes: List[str] = []
    fallback = False
    device_note = False
    for result in results:
        first = True
        for run in result.runs:
            lat = run.latency if run.ok else None
            row = [
                _fit(_display(result.name), model_width) if first else "",
                _provider_label(run),
                str(run.batch),
            ]
            if run.ok:
                row += [_ms(lat.p50_ms if lat else None), _ms(lat.p90_ms if lat else None), _ms(lat.p99_ms if lat else None),
                        _rate(run.throughput), _mb(run.memory.peak_bytes)]
            else:
                row += ["n/a", "", "", "", ""]
                notes.append(f"{result.name} {run.provider_requested} batch {run.batch}: {run.note}")
            row += ([_mb(result.file_bytes), _si(result.params), _si(result.macs)] if first else ["", "", ""])
            if compare:
                ref = base.find(run.provider_requested, run.batch)
                row += [
                    _ratio(_p50(run), _p50(ref)),
                    _ratio(_throughput(run), _throughput(ref)),
                    _ratio(result.file_bytes, base.file_bytes) if first else "",
                ]
            fallback = fallback or run.fallback
            device_note = device_note or (run.ok and run.memory.device_bytes is not None)
            rows.append(row)
            first = False
        for note in result.notes:
            notes.append(f"{result.name}: {note}")

    widths = [max(len(h), len(u), *(len(r[i]) for r in rows)) for i, (h, u) in enumerate(zip(headers, units))]

    gap = "  " if sum(widths) + 2 * (len(widths) - 1) <= width else " "

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return gap.join(parts).rstrip()

    out = [line(headers), line(units), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]

    runs = sorted({r.latency.runs for res in results for r in res.runs if r.ok and r.latency})
    isolated = all(r.memory.isolated for res in results for r in res.runs if r.ok)
    warm = sorted({r.warmup_runs for res in results for r in res.runs if r.ok})
    rounds = sorted({r.rounds for res in results for r in res.runs if r.ok and r.latency})
    peak = "peak RSS increase of a fresh process" if isolated else "peak RSS increase of this process (not isolated)"
    if device_note:
        peak += " (GPU rows: device memory increase)"
    legend = (
        f"p50/p90/p99: latency of session.run in ms over {'/'.join(map(str, runs)) or '-'} timed runs in "
        f"{'/'.join(map(str, rounds)) or '-'} interleaved round(s) of a fresh process, each after "
        f"{'/'.join(map(str, warm)) or '-'} warm-up runs; thrpt: samples/s = batch / mean latency; "
        f"peak: {peak}; file: model file with external data; MB = 10^6 bytes; MACs: multiply-adds per sample."
    )
    footer = [legend]
    if compare:
        footer.append(
            f"lat/thr/size: p50 latency, throughput and file size divided by those of {base.name} at the same "
            "provider and batch (lat < 1 and thr > 1: faster)."
        )
    if fallback:
        footer.append("*: the requested provider was unavailable; ran on CPU (--allow-fallback).")
    footer += notes
    out.append("")
    out += [textwrap.fill(text, width=width, subsequent_indent="  ") for text in footer]
    return "\n".join(out) + "\n"
