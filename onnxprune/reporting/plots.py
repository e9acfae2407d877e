"""Report figures as PNG bytes, drawn with matplotlib (the optional extra ``[plot]``) without pyplot's global state."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Optional, Sequence

from onnxprune.errors import UsageError
from onnxprune.fidelity_kinds import HEADLINE_LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from onnxprune.bench.results import BenchResult
    from onnxprune.plan import GroupOutcome
    from onnxprune.sweep import SweepResult

__all__ = ["require_matplotlib", "groups_png", "latency_png", "sweep_png"]

BEFORE, AFTER = "#9fb3cc", "#1f5fa8"            # the original, the pruned model
PALETTE = (BEFORE, AFTER, "#e07b39", "#3a9d5d", "#8e5ba8", "#c44e52")


def require_matplotlib(option: str) -> None:
    """Raise a one-line UsageError naming ``option`` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{option} needs matplotlib, which is not installed.",
                         note="pip install 'onnxprune[plot]'") from None


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _nan(values: Sequence[Optional[float]], scale: float = 1.0) -> list[float]:
    """Values times ``scale``, with None as NaN (a gap in a line)."""
    return [float("nan") if v is None else scale * v for v in values]


def _cap_percent(ax) -> None:
    """Keep a percentage axis from showing values above 100 % when autoscaling pads a flat line."""
    low, high = ax.get_ylim()
    if high > 100.5:
        ax.set_ylim(low, 100.5)


def _short(name: str, width: int = 36) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def groups_png(groups: Sequence[GroupOutcome]) -> Optional[bytes]:
    """Channels before and after, and the relative re-fit error, per group that was prunable; None if there is none."""
    shown = [g for g in groups if g.before != g.after or not g.reasons]
    if not shown:
        return None
    fig = _figure(11, 1.4 + 0.32 * len(shown))
    ax_channels, ax_error = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    rows = range(len(shown))
    widest = max(g.before for g in shown)
    ax_channels.barh(rows, [g.before for g in shown], height=0.75, color=BEFORE)
    ax_channels.barh(rows, [g.after for g in shown], height=0.45, color=AFTER)
    for row, g in zip(rows, shown):
        ax_channels.text(g.before + widest * 0.01, row, f"{g.after} / {g.before}", va="center", fontsize=8)
    ax_channels.set_xlim(0, widest * 1.2)
    ax_channels.set_yticks(list(rows), [_short(g.name) for g in shown], fontsize=8)
    ax_channels.invert_yaxis()
    ax_channels.set_xlabel("channels")
    ax_channels.set_title("channels per group (light: before, dark: after)")

    errors = [g.error or 0.0 for g in shown]
    top = max(errors) or 1.0
    ax_error.barh(rows, errors, height=0.6, color=AFTER)
    for row, g in zip(rows, shown):
        text = "untouched" if g.error is None else f"{g.error:.3g}"
        ax_error.text((g.error or 0.0) + top * 0.01, row, text, va="center", fontsize=8,
                      color="gray" if g.error is None else "black")
    ax_error.set_xlim(0, top * 1.25)
    ax_error.locator_params(axis="x", nbins=4)
    ax_error.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax_error.set_xlabel("relative re-fit error (0 = exact)")
    ax_error.set_title("reconstruction error per group")
    return _png(fig)


def latency_png(results: Sequence[BenchResult], labels: Optional[Sequence[str]] = None) -> Optional[bytes]:
    """p50 latency (bar, whisker to p90) per model and provider, one panel per batch size; None if nothing ran.

    ``labels`` name the models (default: file names); bars after the first show their ratio to the first model's
    latency on the same provider.
    """
    names = list(labels) if labels is not None else [r.name for r in results]
    providers = list(dict.fromkeys(run.provider_requested for r in results for run in r.runs))
    series = [(f"{name} [{p}]" if len(providers) > 1 else name, result, p)
              for p in providers for name, result in zip(names, results)]
    batches = sorted({run.batch for r in results for run in r.runs})
    if not any(run.p50_ms is not None for r in results for run in r.runs):
        return None
    fig = _figure(min(max(4.5, (1.2 + 0.9 * len(series)) * len(batches)), 14), 4.2)
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        for i, (label, result, provider) in enumerate(series):
            run = result.find(provider, batch)
            ms = run.p50_ms if run is not None else None
            if ms is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="gray")
                continue
            whisker = [[0.0], [run.latency.p90_ms - ms]]
            ax.bar(i, ms, color=PALETTE[i % len(PALETTE)], yerr=whisker, capsize=4, ecolor="#444")
            first = results[0].find(provider, batch)
            text = f"{ms:.3g} ms"
            if result is not results[0] and first is not None and first.p50_ms:
                text += f"\n{ms / first.p50_ms:.2f}×"
            ax.text(i, run.latency.p90_ms, text, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(series)), [s[0] for s in series], fontsize=8, rotation=20 if len(series) > 3 else 0)
        ax.set_title(f"batch {batch}")
        ax.margins(y=0.2)
    axes[0].set_ylabel("latency per run, ms (bar p50, whisker p90)")
    return _png(fig)


def _quality(result: SweepResult) -> tuple[str, list[Optional[float]], Optional[float], bool]:
    """The fidelity axis of the trade-off panel: label, value per point, the original's value, lower-is-better."""
    fids = [p.fidelity for p in result.points]
    if any(f is not None and f.accuracy_after is not None for f in fids):
        return ("held-out accuracy, %", [None if f is None else 100 * f.accuracy_after for f in fids],
                None if result.accuracy is None else 100 * result.accuracy, False)
    if any(f is not None and f.headline_value is not None for f in fids):
        name = next(f.headline_name for f in fids if f is not None and f.headline_value is not None)
        return (f"{HEADLINE_LABELS.get(name, name)} with the original, %",
                [None if f is None or f.headline_value is None else 100 * f.headline_value for f in fids], 100.0, False)
    return "relative output error", [None if f is None else f.relative_error for f in fids], 0.0, True


def sweep_png(result: SweepResult) -> bytes:
    """Fidelity, output error and latency versus FLOPs kept, and fidelity versus cost with the Pareto front."""
    points = result.points
    x = [100 * p.flops_kept for p in points]
    fig = _figure(11, 8)
    (ax_fid, ax_err), (ax_lat, ax_front) = fig.subplots(2, 2)
    xlabel = "FLOPs kept, % of the original multiply-adds"

    agreement = [None if p.fidelity is None else p.fidelity.headline_value for p in points]
    accuracy = [None if p.fidelity is None else p.fidelity.accuracy_after for p in points]
    if any(a is not None for a in agreement):
        name = next(p.fidelity.headline_name for p in points if p.fidelity is not None and p.fidelity.headline_value is not None)
        ax_fid.plot(x, _nan(agreement, 100), "o-", color=AFTER, label=HEADLINE_LABELS.get(name, name))
    if any(a is not None for a in accuracy):
        ax_fid.plot(x, _nan(accuracy, 100), "s-", color=PALETTE[2], label="accuracy, pruned")
        if result.accuracy is not None:
            ax_fid.axhline(100 * result.accuracy, ls="--", color="gray", label="accuracy, original")
    ax_fid.set(xlabel=xlabel, ylabel="%", title=f"fidelity on {result.holdout_samples} held-out samples")
    if ax_fid.lines:
        ax_fid.legend(fontsize=8)
        _cap_percent(ax_fid)
    else:
        ax_fid.text(0.5, 0.5, "no class outputs: see the relative error", ha="center", transform=ax_fid.transAxes)

    ax_err.plot(x, _nan([None if p.fidelity is None else p.fidelity.relative_error for p in points]), "o-", color=AFTER)
    ax_err.set(xlabel=xlabel, ylabel="‖y_pruned − y‖ / ‖y‖", title="relative output error")
    ax_err.set_ylim(bottom=0)

    base = result.baseline.p50_ms if result.baseline is not None else None
    latency = [p.latency.p50_ms if p.latency is not None else None for p in points]
    if any(v is not None for v in latency):
        ax_lat.plot(x, _nan(latency), "o-", color=AFTER, label="pruned")
        if base is not None:
            ax_lat.axhline(base, ls="--", color="gray", label="original")
        ax_lat.set_ylim(bottom=0)
        ax_lat.legend(fontsize=8)
    else:
        note = next((p.latency.note for p in points if p.latency is not None and p.latency.note), "")
        ax_lat.text(0.5, 0.5, f"latency not measured\n{note}", ha="center", transform=ax_lat.transAxes)
    ax_lat.set(xlabel=xlabel, ylabel="ms per run (p50)", title=f"CPU latency, batch {result.batch}")

    by_latency = result.uses_latency()
    cost = latency if by_latency else x
    label, quality, original, lower_better = _quality(result)
    pareto = result.pareto()
    ax_front.scatter([c for c, q in zip(cost, quality) if q is not None], [q for q in quality if q is not None],
                     color=BEFORE, zorder=2, label="target")
    front = sorted((c, q) for c, q, on in zip(cost, quality, pareto) if on and q is not None)
    if front:
        ax_front.plot(*zip(*front), "o-", color=AFTER, zorder=3, label="Pareto front")
    for i, (c, q, p) in enumerate(zip(cost, quality, points)):
        if q is not None:  # staggered so that labels of close points stay apart
            ax_front.annotate(f"{p.target * 100:g}%", (c, q), textcoords="offset points", xytext=(4, 4 + 9 * (i % 3)),
                              fontsize=8)
    original_cost = base if by_latency else 100.0
    if original is not None and original_cost is not None:
        ax_front.scatter([original_cost], [original], marker="*", s=140, color="gray", zorder=3, label="original")
    if lower_better:
        ax_front.invert_yaxis()
    else:
        _cap_percent(ax_front)
    ax_front.set(xlabel="ms per run (p50)" if by_latency else xlabel, ylabel=label,
                 title="trade-off: up and left is better")
    ax_front.legend(fontsize=8)
    return _png(fig)
