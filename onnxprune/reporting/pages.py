"""The HTML page of each command: its text summary and its figures, in one self-contained file."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from onnxprune.bench.results import BenchResult
from onnxprune.bench.table import format_table
from onnxprune.report import PruneReport, render_summary
from onnxprune.reporting.html import document, heading, image, paragraph, preformatted
from onnxprune.reporting.plots import groups_png, latency_png, sweep_png
from onnxprune.sweep import SweepResult, format_sweep_table

__all__ = ["compress_page", "bench_page", "sweep_page"]


def compress_page(report: PruneReport) -> str:
    """Summary (every group listed), channels and re-fit error per group, latency before/after when measured."""
    parts = [paragraph(f"{report.model} → {report.output or '(not written)'}"), heading("Summary"),
             preformatted(render_summary(report, verbose=True)), heading("Channel groups")]
    groups = groups_png(report.groups)
    parts.append(image(groups, "channels before and after, and re-fit error, per group") if groups is not None
                 else paragraph("No prunable channel group: every group is frozen.", note=True))
    if report.bench is not None:
        latency = latency_png([report.bench.original, report.bench.pruned], labels=["original", "pruned"])
        parts.append(heading(f"Latency on {report.bench.provider}"))
        parts.append(image(latency, "latency before and after per batch size") if latency is not None
                     else paragraph("No batch size could be measured.", note=True))
        parts.append(preformatted(format_table([report.bench.original, report.bench.pruned])))
    return document(f"onnxprune compress: {Path(report.model).name}", parts)


def bench_page(results: Sequence[BenchResult]) -> str:
    """The bench table and the latency of every model per batch size."""
    parts = [preformatted(format_table(results))]
    latency = latency_png(results)
    if latency is not None:
        parts.append(image(latency, "latency per model and batch size"))
    return document(f"onnxprune bench: {', '.join(r.name for r in results)}", parts)


def sweep_page(result: SweepResult) -> str:
    """The sweep table and the fidelity/latency versus FLOPs figure."""
    parts = [paragraph(result.model), preformatted(format_sweep_table(result)),
             image(sweep_png(result), "fidelity and latency versus FLOPs kept, with the Pareto front")]
    return document(f"onnxprune sweep: {Path(result.model).name}", parts)
