"""Depth pruning: residual branches that can be removed whole (README "Removing whole blocks").

A channel group is a removable branch when its channels fill every tensor they travel through, nothing but the
group's own nodes reads those tensors, and each of its consumers writes only into a residual sum (a ResNet
block's inner channels, a MobileNetV2 block's expansion). Keeping none of its channels then removes the whole
branch: the producers, every node between and the consumers disappear, and the residual Add passes its shortcut
on alone (``onnxprune/rewrite/apply.py``). A plain chain has no such group: no layer is removed that the graph
cannot bypass.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, ChannelGroup, Consumer
from onnxprune.residual import residual_landings, tensor_producers, tensor_readers

BYPASSABLE_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def removable_groups(model: onnx.ModelProto, analysis: Analysis) -> set[int]:
    """Ids of the prunable groups whose whole branch can be removed (module docstring)."""
    landings = {node: landing for node, landing in residual_landings(model, analysis, analysis.consumers).items()
                if landing.scale is None}   # through a BatchNormalization: not measured as a removable branch
    producers_of = tensor_producers(model)
    readers = tensor_readers(model)
    group_of = np.full(analysis.n_classes, -1)
    for g in analysis.groups:
        group_of[g.classes] = g.id
    carried: dict[int, list[tuple[str, bool]]] = {}   # group id -> (tensor, whether the group fills it)
    for tensor in analysis.layouts:
        ids = set(group_of[analysis.classes_of(tensor)].tolist())
        for i in ids:
            carried.setdefault(i, []).append((tensor, len(ids) == 1))
    outputs = {o.name for o in model.graph.output}
    return {g.id for g in analysis.groups
            if _removable(g, carried.get(g.id, []), landings, producers_of, readers, outputs)}


def _removable(group: ChannelGroup, carried: list[tuple[str, bool]], landings, producers_of, readers,
               outputs) -> bool:
    if not group.prunable or group.frozen.any():
        return False
    if any(c.node not in landings or c.op not in BYPASSABLE_OPS for c in group.consumers):
        return False
    if {landings[c.node].other for c in group.consumers} & {c.output for c in group.consumers}:
        return False   # a sum of two of its own layers: no shortcut would be left to pass on
    whole = {t for t, fills in carried if fills}
    if len(whole) < len(carried) or whole & outputs:
        return False   # another group's channels share a tensor with these, or a graph output carries them
    consumer_inputs = {(c.node, c.input) for c in group.consumers}
    gone: dict[str, onnx.NodeProto] = {}
    for tensor in whole:
        producer = producers_of.get(tensor)
        if producer is None or not all(o in whole for o in producer.output if o):
            return False   # a graph input, or a node that also writes what stays
        gone[producer.name] = producer
        for node in readers.get(tensor, []):
            if (node.name, tensor) not in consumer_inputs and not all(o in whole for o in node.output if o):
                return False   # read by something that stays
    gone.update((c.node, producers_of[c.output]) for c in group.consumers)   # the consumers go too
    for node in gone.values():   # what the branch reads must stay read: removing it must not strand a layer
        for tensor in node.input:
            if tensor and tensor not in whole and tensor in producers_of and \
                    not any(r.name not in gone for r in readers.get(tensor, [])):
                return False
    return True


def bypassed(analysis: Analysis, kept: np.ndarray) -> list[Consumer]:
    """The consumers ``kept`` leaves no input channel: the last layers of removed branches."""
    return [c for c in analysis.consumers if not analysis.mask(c.input, kept).any()]


def vanished(analysis: Analysis, kept: np.ndarray) -> set[str]:
    """Consumer nodes that are not in the pruned graph as layers: those left no input channel (a removed branch's
    last layers) and those left no output channel (its first layers)."""
    gone = {c.node for c in bypassed(analysis, kept)}
    return gone | {c.node for c in analysis.consumers
                   if c.output in analysis.layouts and not analysis.mask(c.output, kept).any()}
