"""What a compress run did, as an object, a JSON-ready dict and a text summary."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from onnxprune.bench.compare import Comparison
from onnxprune.graph.input_shapes import shapes_text
from onnxprune.plan import GroupOutcome, Target
from onnxprune.verify import Fidelity


@dataclass
class PruneReport:
    """Everything a compress run measured; ``to_dict`` is what ``--report`` writes."""

    model: str
    output: str | None
    target: Target | None
    method: str
    params: tuple[int, int]
    flops: tuple[int, int]
    file_size: tuple[int, int | None]
    groups: list[GroupOutcome]
    fidelity: Fidelity | None
    timings: dict[str, float]
    calibration_samples: int
    calibration_batch: int = 0                   # samples per ONNX Runtime call of the calibration passes
    held_out_samples: int = 0                    # samples kept out of calibration for the fidelity check (--holdout)
    # with the CPU's default counts: (block, before, after) multiply-adds with Conv outputs in whole blocks
    flops_in_blocks: tuple[int, int, int] | None = None
    blocked: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bench: Comparison | None = None   # original vs pruned latency (compress --bench)
    latency: dict | None = None       # --target-latency: budget, provider, batch, original and predicted ms
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # where the multiply-adds were counted
    executor: dict | None = None      # where the passes and rankings ran (onnxprune.executor.Executor.report)
    # peak resident memory per stage (MiB) and the error-correcting frontier's budget and peaks
    memory: dict | None = None
    # layers re-fitted to what their ReLU/Clip lets through and the shift passes per stage (``rectified.py``)
    activation_refit: dict | None = None
    shortcut_convs: list[str] = field(default_factory=list)   # Pads written as 1x1 convolutions (rewrite/layout.py)
    subnormals_flushed: int = 0   # subnormal float32 weights set to zero in the output (graph/subnormal.py)

    @property
    def removed(self) -> list[GroupOutcome]:
        """The groups removed whole: residual branches whose layers are gone (``onnxprune/depth.py``)."""
        return [g for g in self.groups if g.removed]

    def achieved(self, kind: str) -> float:
        before, after = self.params if kind == "params" else self.flops
        return after / before if before else 1.0

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "output": self.output,
            "target": None if self.target is None else {"kind": self.target.kind, "fraction": self.target.fraction},
            "method": self.method,
            "achieved": {"params": self.achieved("params"), "flops": self.achieved("flops")},
            "params": {"before": self.params[0], "after": self.params[1]},
            "flops": {"before": self.flops[0], "after": self.flops[1], "unit": "multiply-adds at batch 1",
                      "input_shapes": {name: list(dims) for name, dims in self.input_shapes.items()},
                      "in_blocks": None if self.flops_in_blocks is None else dict(
                          zip(("block", "before", "after"), self.flops_in_blocks))},
            "file_size": {"before": self.file_size[0], "after": self.file_size[1], "unit": "bytes"},
            "groups": [asdict(g) for g in self.groups],
            "removed_blocks": [{"group": g.name, "channels": g.before, "layers": [*g.producers, *g.consumers]}
                               for g in self.removed],
            "blocked": [{"node": n, "op": o, "reason": r} for n, o, r in self.blocked],
            "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "timings_unit": "seconds",
            "calibration_samples": self.calibration_samples,
            "calibration_batch": self.calibration_batch,
            "held_out_samples": self.held_out_samples,
            "notes": self.notes,
            "bench": None if self.bench is None else self.bench.to_dict(),
            "latency": self.latency,
            "executor": self.executor,
            "memory": self.memory,
            "activation_refit": self.activation_refit,
            "shortcut_convs": self.shortcut_convs,
            "subnormals_flushed": self.subnormals_flushed,
        }


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _ratio(before: float, after: float | None) -> str:
    return "" if not before or after is None else f"{after / before:6.1%}"


def render_summary(report: PruneReport, *, verbose: bool = False) -> str:
    """The table printed at the end of ``onnxprune compress``."""
    lines = []
    shown = [g for g in report.groups if g.before != g.after or verbose]
    if shown:
        width = min(max(len(g.name) for g in shown), 48)
        lines.append(f"{'group':<{width}}  {'channels':>11}  {'re-fit error':>12}")
        for g in shown:
            err = "removed" if g.removed else "" if g.error is None else f"{g.error:12.4f}"
            lines.append(f"{g.name[-width:]:<{width}}  {g.before:>4} -> {g.after:<4}  {err:>12}")
        lines.append("")
    untouched = [g for g in report.groups if g.before == g.after and g.reasons]
    if untouched and not verbose:
        lines.append(f"{len(untouched)} group(s) left untouched (frozen or nothing to re-fit); -v lists them.")
    if verbose:
        for g in untouched:
            lines.append(f"  {g.name}: {'; '.join(g.reasons)}")
    if untouched or verbose:
        lines.append("")
    if report.removed:
        lines.append(f"removed {len(report.removed)} residual branch(es) whole (their layers are gone; each residual "
                     "Add passes its shortcut on alone; --no-depth keeps every branch): "
                     + ", ".join(g.name for g in report.removed))
        lines.append("")
    rows = [("parameters", *report.params), ("multiply-adds", *report.flops)]
    if report.flops_in_blocks is not None:
        rows.append((f"  in blocks of {report.flops_in_blocks[0]}", *report.flops_in_blocks[1:]))
    rows.append(("file size (bytes)", *report.file_size))
    lines.append(f"{'':<18} {'before':>10} {'after':>10} {'kept':>7}")
    for label, before, after in rows:
        lines.append(f"{label:<18} {_human(before):>10} {_human(after) if after is not None else '-':>10} {_ratio(before, after):>7}")
    if report.input_shapes:
        lines.append(f"multiply-adds counted at {shapes_text(report.input_shapes)} (the first calibration sample's "
                     "shape)")
    if report.flops_in_blocks is not None:
        lines.append(f"in blocks of {report.flops_in_blocks[0]}: every Conv's output channels rounded up to onnxruntime's "
                     "CPU block, as its convolutions compute them; CPU time follows these more closely "
                     "(--target-latency prices measured time)")
    if report.bench is not None:
        lines.extend(_bench_lines(report.bench))
    if report.target is not None:
        lines.append(f"target: keep {report.target.fraction:.1%} of {report.target.kind}; achieved {report.achieved(report.target.kind):.1%}")
    if report.latency is not None:
        lat = report.latency
        lines.append(f"latency: keep {lat['target']:.1%} on {lat['provider']} at batch {lat['batch']}; predicted "
                     f"{lat['predicted_ratio']:.1%} ({lat['original_ms']:.2f} -> {lat['predicted_ms']:.2f} ms per run: "
                     f"kernels from onnxruntime's profiler and {lat['overhead_ms']:.2f} ms of session overhead)")
        if "measured_ratio" in lat:
            lines.append(f"latency: measured {lat['measured_ratio']:.1%} ± {lat['measured_noise']:.1%} "
                         f"({lat['measured_original_ms']:.2f} -> {lat['measured_ms']:.2f} ms per run, wall-clock "
                         "session.run, the two models in interleaved rounds)")
    lines.append(f"samples: {report.calibration_samples} calibrated on, {report.held_out_samples} held out (--holdout)")
    fid = report.fidelity
    if fid is not None:
        lines.extend(fidelity_lines(fid))
    else:
        lines.append("fidelity: not measured: no held-out samples (--holdout 0, or fewer than two samples)")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items()))
    if verbose and report.memory:
        lines.extend(_memory_lines(report.memory))
    if report.executor is not None and report.executor.get("kind") == "ray":
        from onnxprune.executor import describe

        lines.append(describe(report.executor))
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def _memory_lines(memory: dict) -> list[str]:
    """-v: peak resident memory per stage and where the error-correcting pass kept its per-batch tensors."""
    lines = []
    if memory.get("peak_rss_mib"):
        lines.append("peak memory (resident, MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                                   memory["peak_rss_mib"].items()))
    frontier = memory.get("frontier")
    if frontier and (frontier["peak_in_memory_mib"] or frontier["peak_on_disk_mib"]):
        lines.append(f"error-correcting frontier: peak {frontier['peak_in_memory_mib']:.0f} MiB in memory "
                     f"(budget {frontier['budget_mib']:.0f} MiB), {frontier['peak_on_disk_mib']:.0f} MiB in "
                     "temporary files")
    return lines


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}%}"


def fidelity_lines(fid: Fidelity) -> list[str]:
    """The summary's fidelity line, worded for the judged output's kind, then the fidelity notes."""
    m = fid.metrics
    parts = [f"held-out samples: {fid.samples}"]
    if fid.kind == "classes":
        parts.append(f"top-1 agreement {_pct(fid.top1_agreement, 2)}")
    elif fid.kind == "sequence":
        parts.append(f"{_pct(m.get('sequences_identical'))} of decoded sequences identical")
        parts.append(f"per-step agreement {_pct(m.get('step_agreement'))}")
        parts.append(f"character error {_pct(m.get('character_error_rate'))}")
    elif fid.kind == "dense" and "iou" in m:
        iou = m.get("iou")
        parts.append(f"mask IoU {'n/a' if iou is None else f'{iou:.3f}'} (above {m.get('threshold', 0.5):g}, "
                     "pooled over all pixels)")
    elif fid.kind == "dense":
        parts.append(f"per-pixel argmax agreement {_pct(m.get('pixel_agreement'))}")
    elif fid.kind == "yolo":
        if m.get("f1") is None:
            parts.append("boxes F1 n/a (the original predicts no box)")
        else:
            parts.append(f"boxes F1 {m['f1']:.2f} (P {m['precision']:.2f}, R {m['recall']:.2f}) at IoU "
                         f"{m['match_iou']:g} vs the original's {m['boxes_original']} boxes (confidence "
                         f"> {m['confidence']:g})")
    parts.append(f"relative output error {fid.relative_error:.4f}")
    if fid.accuracy_before is not None:
        parts.append(f"accuracy {fid.accuracy_before:.2%} -> {fid.accuracy_after:.2%}")
    label = fid.kind if fid.kind != "other" else f"relative error only: {fid.reason or 'no --fidelity kind fits'}"
    lines = [f"fidelity ({label}): " + ", ".join(parts)]
    if len(fid.output_errors) > 1:
        others = ", ".join(f"'{name}' {err:.4f}" for name, err in fid.output_errors.items())
        lines.append(f"  judged output '{fid.output}' (the first of {len(fid.output_errors)}); relative error of "
                     f"every output: {others}")
    lines.extend(f"  fidelity note: {note}" for note in fid.notes)
    return lines


def _bench_lines(bench: Comparison) -> list[str]:
    """p50 latency rows under the size rows of the summary, and how they were measured."""
    lines = []
    for row in bench.ratios():
        before, after = row["p50_ms_before"], row["p50_ms_after"]
        label = f"p50 ms, batch {row['batch']}"
        if before is None:
            lines.append(f"{label:<18} {'n/a':>10} {'n/a':>10}  ({row['note']})")
        else:
            after_text = "-" if after is None else f"{after:.3f}"
            lines.append(f"{label:<18} {before:>10.3f} {after_text:>10} {_ratio(before, after):>7}")
    s = bench.settings
    threads = f"{s.threads} threads" if s.threads else "onnxruntime's default threads"
    lines.append(f"latency: session.run on {bench.provider}, {s.runs} timed runs in {s.rounds} interleaved rounds "
                 f"(each after {s.warmup} warm-up runs), "
                 f"{threads} (onnxprune bench)")
    return lines
