"""Dense score heads: the layers whose calibration positions follow the original network's scores.

A detector decides at a few hundred of its tens of thousands of grid cells; positions sampled uniformly are nearly
all background, where the class branch only has to stay very negative, so its re-fits learn little about the cells
where a box is scored (a YOLOv8n layout detector at half its multiply-adds: F1 0.60 → 0.85 with score-guided
positions, README "Detection heads").

A *score map* is the output of a Conv or ConvTranspose whose channels all reach a Sigmoid that reaches a graph output
without passing another Conv/ConvTranspose/Gemm/MatMul (traced through Concat, Split, flattening Reshapes and
per-channel constant arithmetic), where that output is a list of candidates (rank 3: [N, C, A] or [N, A, C]), as a
detector's anchors are, before or after the Sigmoid (YOLOv8, YOLOX). A map output (rank 4: a text detector's
probability map, a segmentation mask) judges every pixel alike and is left to uniform positions: guiding the last
layer of the two DBNet text detectors was measured neutral to worse (IoU 0.942 → 0.942, 0.898 → 0.893).

The layers a score map *guides* are the Conv and ConvTranspose consumers on its own grid that it post-dominates:
every path from their output to a graph output passes through the score map's producer (the class branch of a
detection head, not the shared neck or the box branch). Their positions are sampled with probability rising with
``sigmoid(max over channels)`` of the original network's score map at that position, plus a floor for the
background (``calibration/collect.py``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, Consumer
from onnxprune.analysis.propagate import attr
from onnxprune.residual import tensor_producers, tensor_readers

_LINEAR = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_SAME_CHANNELS = frozenset({"Identity", "Cast", "Relu", "Clip"})
_CONSTANT_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div"})

# a position where the original scores nothing still weighs this much against one it scores surely: background
# keeps about one row in a hundred of a sure detection's (0.1 was measured worse: F1 0.76 against 0.80 in a first
# version; README "Detection heads")
FLOOR = 0.01

Range = tuple[int, int]   # channels [start, stop) of a tensor's axis 1


def score_guides(model: onnx.ModelProto, analysis: Analysis, consumers: Sequence[Consumer]) -> dict[str, str]:
    """Consumer node name → the score map (tensor name) that guides its positions, for ``consumers`` that have one."""
    readers = tensor_readers(model)
    producer = tensor_producers(model)
    constants = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    shapes = analysis.shapes
    maps: dict[str, str] = {}   # producer node name → guide tensor
    for node in model.graph.node:
        if node.op_type != "Sigmoid" or _is_swish(node, readers):
            continue
        reached = _outputs_reached(node.output[0], readers, outputs, lambda n: n.op_type in _LINEAR)
        if any(len(shapes.get(o, ())) == 3 for o in reached):   # a list of candidates, not a map
            for conv, tensor in _score_sources(node.input[0], producer, constants, shapes):
                maps.setdefault(conv, tensor)
    guides: dict[str, str] = {}
    for head, tensor in maps.items():
        grid = shapes.get(tensor, ())[2:]
        for c in consumers:
            if c.op in ("Conv", "ConvTranspose") and c.node not in guides and shapes.get(c.output, ())[2:] == grid \
                    and (c.node == head or _post_dominated(c.output, head, readers, outputs)):
                guides[c.node] = tensor
    return guides


def score_note(guides: Sequence[tuple[str, str]]) -> str:
    """The summary's line on the guided layers (consumer, score map pairs)."""
    maps = list(dict.fromkeys(tensor for _, tensor in guides))
    return (f"{len(guides)} layer(s) of {len(maps)} score head(s) calibrated on positions where the original's "
            f"scores are high ({', '.join(maps)}; --no-score-positions samples them uniformly)")


def position_log_weights(scores: np.ndarray) -> np.ndarray:
    """Per sample and position (N, H*W…): log(FLOOR + sigmoid of the largest channel) of a score map (N, C, H…)."""
    top = scores.reshape(scores.shape[0], scores.shape[1], -1).max(axis=1).astype(np.float64)
    return np.log(FLOOR + 0.5 * (1.0 + np.tanh(0.5 * top)))   # the logistic function without overflow


def _is_swish(node: onnx.NodeProto, readers: Mapping[str, list[onnx.NodeProto]]) -> bool:
    """x * Sigmoid(x): an activation (SiLU), not a score."""
    return any(r.op_type == "Mul" and node.input[0] in r.input for r in readers.get(node.output[0], []))


def _outputs_reached(tensor: str, readers: Mapping[str, list[onnx.NodeProto]], outputs: set[str],
                     stops: Callable[[onnx.NodeProto], bool]) -> set[str]:
    """The graph outputs reached from ``tensor`` through nodes that do not ``stop`` the way."""
    stack, seen, reached = [tensor], {tensor}, set()
    while stack:
        t = stack.pop()
        if t in outputs:
            reached.add(t)
        for node in readers.get(t, []):
            if not stops(node):
                fresh = [o for o in node.output if o and o not in seen]
                seen.update(fresh)
                stack.extend(fresh)
    return reached


def _post_dominated(tensor: str, head: str, readers: Mapping[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    """Whether every path from ``tensor`` to a graph output passes through the node named ``head``."""
    return not _outputs_reached(tensor, readers, outputs, lambda node: node.name == head)


def _score_sources(tensor: str, producer: Mapping[str, onnx.NodeProto], constants: set[str],
                   shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """(Conv/ConvTranspose node, guide tensor) pairs whose every output channel ends in ``tensor``; the guide is the
    last tensor on the way with the conv output's shape (after a bias Add, say), else the conv output."""
    found: list[tuple[str, str]] = []
    shape = shapes.get(tensor)
    if shape is None or len(shape) < 3:
        return found
    stack: list[tuple[str, Range, str | None]] = [(tensor, (0, shape[1]), None)]
    while stack:
        t, (a, b), guide = stack.pop()
        node, shape = producer.get(t), shapes.get(t)
        if node is None or shape is None or len(shape) < 2 or a >= b:
            continue
        guide = guide if guide is not None and shapes.get(guide) == shape else t
        if node.op_type in ("Conv", "ConvTranspose"):
            if (a, b) == (0, shape[1]) and len(shape) >= 4:
                found.append((node.name, guide))
            continue
        stack.extend((src, rng, guide) for src, rng in _channel_sources(node, t, (a, b), constants, shapes))
    return found


def _channel_sources(node: onnx.NodeProto, tensor: str, channels: Range, constants: set[str],
                     shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, Range]]:
    """Which channels of which inputs the channels ``channels`` of ``node``'s output ``tensor`` come from, for ops
    that keep axis 1 as channels; none for any other op."""
    a, b = channels
    op, out_shape = node.op_type, shapes[tensor]
    known = [shapes.get(t) for t in (*node.input, *node.output) if t and t not in constants]
    if any(shape is None for shape in known) or op in ("Concat", "Split") and min(map(len, known)) < 2:
        return []
    if op in _SAME_CHANNELS or (op in _CONSTANT_ARITHMETIC and len(node.input) == 2 and node.input[1] in constants):
        return [(node.input[0], channels)]
    if op in ("Reshape", "Flatten"):
        keeps = len(out_shape) >= 2 and tuple(shapes[node.input[0]][:2]) == tuple(out_shape[:2])
        return [(node.input[0], channels)] if keeps else []
    if op == "Concat":
        axis = attr(node, "axis") % len(out_shape)
        if axis != 1:
            return [(t, channels) for t in node.input]
        sources, offset = [], 0
        for t in node.input:
            width = shapes[t][1]
            lo, hi = max(a, offset), min(b, offset + width)
            if lo < hi:
                sources.append((t, (lo - offset, hi - offset)))
            offset += width
        return sources
    if op == "Split" and attr(node, "axis", 0) % len(out_shape) == 1:
        offset = sum(shapes[o][1] for o in node.output[:list(node.output).index(tensor)])
        return [(node.input[0], (a + offset, b + offset))]
    return []
