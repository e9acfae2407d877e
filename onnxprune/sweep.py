"""Compress at several FLOPs targets, then measure fidelity and CPU latency of each: the trade-off to pick from.

Each target is one ``compress`` call. They share a statistics cache (``--cache``: the options' own folder, else a
temporary one), so that only the first calibrates and ranks the channels; every target still runs its own
error-correcting re-fit, which depends on the channels kept. Targets run from the smallest up, so an unreachable
target fails before any work. Latency is measured afterwards for the original and every pruned
model together, with ``benchmark_models`` (one fresh process per model).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from onnxprune.atomic import removed_on_error
from onnxprune.bench.measure import DEFAULT_ROUNDS, DEFAULT_RUNS, benchmark_models
from onnxprune.bench.results import RunResult
from onnxprune.compress import CompressOptions, compress
from onnxprune.errors import UsageError
from onnxprune.graph.io import check_output_path
from onnxprune.plan import Target
from onnxprune.verify import Fidelity

__all__ = ["SweepPoint", "SweepResult", "sweep", "format_sweep_table", "pruned_name"]


@dataclass
class SweepPoint:
    """One target: what compress achieved, its held-out fidelity and the pruned model's latency."""

    target: float                   # requested fraction of the original multiply-adds
    flops_kept: float               # achieved fraction of multiply-adds
    params_kept: float              # achieved fraction of parameters
    fidelity: Optional[Fidelity]
    latency: Optional[RunResult]    # CPU, at the sweep's batch size
    output: Optional[str]           # the pruned model, when kept (out_dir)
    seconds: float                  # time compress took

    def quality(self) -> Optional[float]:
        """What the Pareto view ranks by (higher is better): accuracy, else the --fidelity kind's headline (top-1
        agreement, identical decoded sequences, IoU/pixel agreement, box F1), else −relative error."""
        fid = self.fidelity
        if fid is None:
            return None
        if fid.accuracy_after is not None:
            return fid.accuracy_after
        return fid.headline_value if fid.headline_value is not None else -fid.relative_error


@dataclass
class SweepResult:
    """The original's figures and one ``SweepPoint`` per target, largest target first."""

    model: str
    flops: int
    params: int
    batch: int
    runs: int
    threads: Optional[int]
    holdout_samples: int
    accuracy: Optional[float]       # the original's held-out accuracy, when the data has labels
    baseline: Optional[RunResult]   # the original's latency
    points: list[SweepPoint]

    def uses_latency(self) -> bool:
        """True when every model's latency was measured: the Pareto view then trades fidelity for latency."""
        return self.baseline is not None and self.baseline.p50_ms is not None and all(
            p.latency is not None and p.latency.p50_ms is not None for p in self.points)

    def pareto(self) -> list[bool]:
        """Per point: no other point is both cheaper (latency, else FLOPs) and at least as faithful."""
        by_latency = self.uses_latency()
        cost = [p.latency.p50_ms if by_latency else p.flops_kept for p in self.points]
        quality = [p.quality() for p in self.points]
        flags = []
        for i, (c, q) in enumerate(zip(cost, quality)):
            dominated = q is None or any(
                j != i and qj is not None and cj <= c and qj >= q and (cj < c or qj > q)
                for j, (cj, qj) in enumerate(zip(cost, quality)))
            flags.append(not dominated)
        return flags

    def to_dict(self) -> dict:
        """What ``sweep --json`` writes; fractions are 0–1, latency in ms."""
        pareto = self.pareto()
        base_ms = self.baseline.p50_ms if self.baseline is not None else None
        points = []
        for point, optimal in zip(self.points, pareto):
            fid = point.fidelity
            ms = point.latency.p50_ms if point.latency is not None else None
            points.append({
                "target_flops": point.target,
                "flops_kept": point.flops_kept,
                "params_kept": point.params_kept,
                "top1_agreement": None if fid is None else fid.top1_agreement,
                "fidelity_kind": None if fid is None else fid.kind,
                "headline": None if fid is None else {"name": fid.headline_name, "value": fid.headline_value},
                "fidelity_metrics": None if fid is None else fid.metrics,
                "relative_error": None if fid is None else fid.relative_error,
                "accuracy": None if fid is None else fid.accuracy_after,
                "latency_p50_ms": ms,
                "latency_p90_ms": point.latency.latency.p90_ms if ms is not None else None,
                "latency_ratio": ms / base_ms if ms is not None and base_ms else None,
                "latency_note": point.latency.note if point.latency is not None else None,
                "pareto": optimal,
                "output": point.output,
                "compress_seconds": round(point.seconds, 3),
            })
        return {
            "tool": "onnxprune sweep",
            "model": self.model,
            "original": {"flops": self.flops, "params": self.params, "accuracy": self.accuracy,
                         "latency_p50_ms": base_ms},
            "holdout_samples": self.holdout_samples,
            "latency": {"provider": "cpu", "batch": self.batch, "runs": self.runs, "rounds": DEFAULT_ROUNDS,
                        "threads": self.threads},
            "pareto_by": "latency" if self.uses_latency() else "flops",
            "units": {"fractions": "0-1 of the original", "latency": "ms per session.run call (p50/p90)",
                      "flops": "multiply-adds per sample", "compress_seconds": "seconds"},
            "points": points,
        }


def pruned_name(model_path: str | os.PathLike, target: float) -> str:
    """``model.flops50.onnx`` for target 0.5."""
    return f"{Path(model_path).name.removesuffix('.onnx')}.flops{target * 100:g}.onnx"


def sweep(model_path: str | os.PathLike, data_path: str | os.PathLike, targets: Sequence[float],
          options: CompressOptions = CompressOptions(), *, batch: int = 1, runs: int = DEFAULT_RUNS,
          threads: Optional[int] = None, out_dir: str | os.PathLike | None = None, force: bool = False,
          log: Optional[Callable[[str], None]] = None) -> SweepResult:
    """Compress ``model_path`` at each fraction of multiply-adds in ``targets`` and measure every result.

    ``options`` are used for every target (its own ``target`` is replaced); latency is measured on CPU. Pruned
    models are written to ``out_dir`` (``pruned_name``; removed again if the sweep fails) or to a temporary folder.
    ``log`` receives one line per step.
    """
    fractions = sorted({float(t) for t in targets})
    if not fractions or not all(0.0 < t <= 1.0 for t in fractions):
        raise UsageError(f"sweep targets must be fractions in (0, 1], got {list(targets)}.")
    if options.holdout <= 0:
        raise UsageError("a sweep needs held-out samples to measure fidelity.", note="use --holdout 0.1 or more")
    say = log or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="onnxprune-sweep-") as tmp, contextlib.ExitStack() as written:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        if options.cache_dir is None and not options.stats_files:   # one calibration pass and ranking for all targets
            options = dataclasses.replace(options, cache_dir=Path(tmp) / "cache")
        outputs = [check_output_path(folder / pruned_name(model_path, t), model_path, force=force,
                                     option="--out-dir") for t in fractions]
        points = []
        for i, (fraction, output) in enumerate(zip(fractions, outputs)):
            say(f"[{i + 1}/{len(fractions)}] compressing to {fraction * 100:g}% of the multiply-adds")
            result = compress(model_path, data_path, dataclasses.replace(options, target=Target("flops", fraction)),
                              output=output, force=force)
            written.enter_context(removed_on_error(output, output.with_name(output.name + ".data")))
            report = result.report
            if report.output is None:
                raise UsageError(f"nothing to prune in '{model_path}': every channel group is frozen.",
                                 note="'onnxprune analyze' shows why")
            points.append(SweepPoint(fraction, report.achieved("flops"), report.achieved("params"), report.fidelity,
                                     None, str(output) if out_dir is not None else None, sum(report.timings.values())))
        say(f"measuring CPU latency at batch {batch} ({runs} runs per model)")
        bench = benchmark_models([model_path, *outputs], providers=["cpu"], batches=[batch], runs=runs,
                                 threads=threads, progress=say)
    for point, result in zip(points, bench[1:]):
        point.latency = result.runs[0]
    first = points[0].fidelity
    return SweepResult(
        model=str(model_path), flops=report.flops[0], params=report.params[0], batch=batch, runs=runs, threads=threads,
        holdout_samples=first.samples if first is not None else 0,
        accuracy=first.accuracy_before if first is not None else None,
        baseline=bench[0].runs[0], points=points[::-1],
    )


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


_HEADERS = {"top1_agreement": "top-1 agree", "sequences_identical": "seq. same", "iou": "mask IoU",
            "pixel_agreement": "px agree", "f1": "box F1"}


def _headline_header(result: SweepResult) -> str:
    """The fidelity column: the --fidelity kind's headline figure (top-1 agreement for class scores)."""
    names = {p.fidelity.headline_name for p in result.points if p.fidelity is not None and p.fidelity.headline_name}
    return _HEADERS.get(names.pop(), "headline") if len(names) == 1 else "top-1 agree"


def format_sweep_table(result: SweepResult) -> str:
    """The table ``onnxprune sweep`` prints: one row for the original, one per target (``*``: Pareto-optimal)."""
    base_ms = result.baseline.p50_ms if result.baseline is not None else None
    headers = ["target", "FLOPs", "params", _headline_header(result), "rel. error", "accuracy", f"p50 ms b{result.batch}",
               "latency x", ""]
    rows = [["original", "100.0%", "100.0%", "-", "-", _pct(result.accuracy),
             "-" if base_ms is None else f"{base_ms:.3f}", "1.00", ""]]
    for point, optimal in zip(result.points, result.pareto()):
        fid = point.fidelity
        ms = point.latency.p50_ms if point.latency is not None else None
        rows.append([
            f"{point.target * 100:g}%",
            _pct(point.flops_kept), _pct(point.params_kept),
            _pct(None if fid is None else fid.headline_value),
            "-" if fid is None else f"{fid.relative_error:.4f}",
            _pct(None if fid is None else fid.accuracy_after),
            "n/a" if ms is None else f"{ms:.3f}",
            "-" if ms is None or not base_ms else f"{ms / base_ms:.2f}",
            "*" if optimal else "",
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [headers, *rows]]
    by = "p50 latency" if result.uses_latency() else "FLOPs"
    notes = sorted({p.latency.note for p in result.points if p.latency is not None and p.latency.note})
    footer = [
        f"fidelity on {result.holdout_samples} held-out samples; FLOPs/params: share of the original's kept; "
        f"latency: session.run on CPU, batch {result.batch}, {result.runs} timed runs in {DEFAULT_ROUNDS} interleaved "
        "rounds, x = pruned / original.",
        f"*: Pareto-optimal (no other target has both lower {by} and higher fidelity).",
        *(f"latency: {note}" for note in notes),
    ]
    return "\n".join([*lines, "", *(textwrap.fill(text, width=100, subsequent_indent="  ") for text in footer)])
