"""A data-free look at a model's channel groups, for ``onnxprune analyze``."""
from __future__ import annotations

import os

from onnxprune.analysis import find_groups
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise
from onnxprune.metrics import count_model


def analyze_model(path: str | os.PathLike) -> dict:
    """Groups of the model at ``path`` as plain data: members, channels, share of MACs, frozen reasons."""
    model = normalise(load_model(path))
    analysis = find_groups(model)
    counts = count_model(model)
    nodes = {n.name: n for n in model.graph.node}
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
            "flops_share": macs / counts.flops if counts.flops else 0.0,
            "producers": [f"{p} ({nodes[p].op_type})" for p in g.producers],
            "consumers": [f"{c.node} ({c.op})" for c in g.consumers],
            "members": [f"{m} ({nodes[m].op_type})" for m in g.members],
            "reasons": g.reasons,
        })
    return {"model": str(path), "params": counts.params, "flops": counts.flops, "groups": groups,
            "blocked": [{"node": n, "op": o, "reason": r} for n, o, r in analysis.blocked]}


def render_groups(summary: dict, *, verbose: bool = False) -> str:
    """A readable tree of the groups."""
    groups = summary["groups"]
    prunable = [g for g in groups if g["prunable"]]
    lines = [f"{summary['model']}: {len(groups)} channel groups, {len(prunable)} prunable; "
             f"{summary['params']:,} parameters, {summary['flops']:,} multiply-adds"]
    for g in groups:
        state = "prunable" if g["prunable"] else "frozen"
        if g["prunable"] and g["frozen_channels"]:
            state = f"prunable, {g['frozen_channels']} frozen"
        lines.append(f"[{g['id']}] {g['name']}  {g['channels']} channels  {g['flops_share']:.1%} of MACs  ({state})")
        members = g["producers"] if verbose else g["producers"][:3] + (["..."] if len(g["producers"]) > 3 else [])
        lines.append(f"    writes: {', '.join(members) or '-'}")
        readers = g["consumers"] if verbose else g["consumers"][:3] + (["..."] if len(g["consumers"]) > 3 else [])
        lines.append(f"    read by: {', '.join(readers) or '-'}")
        if verbose and g["members"]:
            lines.append(f"    follows: {', '.join(g['members'])}")
        for r in g["reasons"]:
            lines.append(f"    frozen: {r}")
    return "\n".join(lines)

