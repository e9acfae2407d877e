"""A data-free look at a model's channel groups, for ``onnxprune analyze``."""
from __future__ import annotations

import os

from typing import Mapping, Sequence

from onnxprune.analysis import find_groups
from onnxprune.analysis.score_heads import score_guides
from onnxprune.bench.inputs import check_overrides, input_specs
from onnxprune.compress import calibrated_consumers
from onnxprune.depth import removable_groups
from onnxprune.graph.input_shapes import concrete_input_shapes, shapes_text
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise, static_shapes
from onnxprune.metrics import count_model


def analyze_model(path: str | os.PathLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Groups of the model at ``path`` as plain data: members, channels, share of MACs, frozen reasons.

    ``input_shapes`` (``--shape``) set the inputs' symbolic dims; a model with symbolic dims besides the batch
    needs them (UsageError otherwise): its costs depend on the resolution."""
    model = normalise(load_model(path))
    check_overrides(input_specs(model), dict(input_shapes or {}), f"'{path}'")
    shapes = concrete_input_shapes(model, input_shapes)
    analysis = find_groups(model, static_shapes(model, shapes))
    counts = count_model(model, shapes)
    nodes = {n.name: n for n in model.graph.node}
    removable = removable_groups(model, analysis)
    guides = score_guides(model, analysis, calibrated_consumers(analysis))
    groups = []
    for g in analysis.groups:
        touched = set(g.producers) | {c.node for c in g.consumers} | set(g.members)
        macs = sum(counts.per_node.get(n, (0, 0))[1] for n in touched)
        groups.append({
            "id": g.id,
            "name": g.name,
            "channels": g.size,
            "frozen_channels": int(g.frozen.sum()),
            "prunable": g.prunable,
            "removable_branch": g.id in removable,
            "flops_share": macs / counts.flops if counts.flops else 0.0,
            "producers": [f"{p} ({nodes[p].op_type})" for p in g.producers],
            "consumers": [f"{c.node} ({c.op})" for c in g.consumers],
            "members": [f"{m} ({nodes[m].op_type})" for m in g.members],
            "score_guided": {c.node: guides[c.node] for c in g.consumers if c.node in guides},
            "reasons": g.reasons,
        })
    return {"model": str(path), "params": counts.params, "flops": counts.flops,
            "input_shapes": {name: list(dims) for name, dims in shapes.items()}, "groups": groups,
            "blocked": [{"node": n, "op": o, "reason": r} for n, o, r in analysis.blocked]}


def render_groups(summary: dict, *, verbose: bool = False) -> str:
    """A table of the groups (channels, frozen channels, share of MACs, state) with their members and reasons below each row."""
    groups = summary["groups"]
    prunable = [g for g in groups if g["prunable"]]
    branches = sum(g["removable_branch"] for g in groups)
    guided = {c: m for g in groups for c, m in g["score_guided"].items()}
    lines = [(f"{summary['model']}: {len(groups)} channel groups, {len(prunable)} prunable"
              f"{f' ({branches} of them residual branches that can be removed whole)' if branches else ''}; "
              f"{summary['params']:,} parameters, {summary['flops']:,} multiply-adds at "
              f"{shapes_text(summary['input_shapes'])}"),
             *([f"{len(guided)} layer(s) of {len(set(guided.values()))} detection score head(s) calibrate on "
                "positions where the original's scores are high (guided: below)"] if guided else []),
             "",
             f"{'id':>4}  {'channels':>8}  {'frozen':>6}  {'% of MACs':>9}  {'state':<8}  group"]
    for g in groups:
        lines.append(f"{g['id']:>4}  {g['channels']:>8}  {g['frozen_channels']:>6}  {g['flops_share']:>9.1%}  "
                     f"{_state(g):<8}  {g['name']}")
        for label, key in (("writes", "producers"), ("read by", "consumers"), ("follows", "members")):
            if g[key]:
                lines.append(f"{'':6}{label + ':':<9} {_listing(g[key], verbose)}")
        if g["score_guided"]:
            by = [f"{c} (by {m})" for c, m in g["score_guided"].items()]
            lines.append(f"{'':6}{'guided:':<9} {_listing(by, verbose)}")
        lines.extend(f"{'':6}{'frozen:':<9} {r}" for r in g["reasons"])
    return "\n".join(lines)


def _state(group: dict) -> str:
    if group["frozen_channels"] == group["channels"]:
        return "frozen"
    if group["removable_branch"]:
        return "branch"   # prunable, and removable whole
    return "prunable" if group["prunable"] else "kept"


def _listing(names: list[str], verbose: bool, limit: int = 3) -> str:
    if verbose or len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, ... (+{len(names) - limit})"
