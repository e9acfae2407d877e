"""Where a consumer's error lands: residual sums (entropic-regression.md §8, measurements.md).

A consumer whose output is added to another branch (a ResNet block's last conv) perturbs the
residual stream, not just its own output. Two things follow:

- its error-correcting target is the original sum minus what the pruned network's other branch
  already contributes, so the re-fit also cancels the error accumulated in the stream;
- its error is judged relative to the stream's energy, not its own output's (the gain c0/E(sum)),
  so the allocation compares blocks by how much they disturb what they write into. The gain counts squared
  where a ReLU rectifies the sum (a post-activation ResNet block: ResNet-56 at half its multiply-adds 80.48 %
  against 77.48 % with the plain gain) and plain where the stream stays linear (an inverted-residual block's linear
  bottleneck: EfficientNet-Lite0 54.7 % top-1 agreement against 43.0 % squared, the MobileNetV2-style CIFAR net
  59.80 % against 59.42 %).

A consumer with no Conv/ConvTranspose/Gemm/MatMul after it (the classifier) writes its error
straight into the output: no later error-correcting re-fit can absorb it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.model import Analysis, Consumer


def tensor_producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node that writes each (named) tensor."""
    return {t: n for n in model.graph.node for t in n.output if t}


def tensor_readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor (each node once per tensor)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    return readers


@dataclass(frozen=True)
class Landing:
    """A consumer output added to another branch: ``total`` = output + ``other``, or, through an inference-mode
    BatchNormalization between them (paddle2onnx keeps those), ``total`` = ``scale``·output + ``shift`` + ``other``
    per channel."""

    total: str
    other: str
    scale: np.ndarray | None = field(default=None, compare=False)
    shift: np.ndarray | None = field(default=None, compare=False)

    def branch(self, y: np.ndarray) -> np.ndarray:
        """What the consumer's output ``y`` (N, C, ...) adds to the sum."""
        return y if self.scale is None else y * per_channel(self.scale, y) + per_channel(self.shift, y)

    def output_for(self, branch: np.ndarray) -> np.ndarray:
        """The consumer output that adds ``branch`` (N, C, ...) to the sum."""
        return branch if self.scale is None else (branch - per_channel(self.shift, branch)) / per_channel(
            self.scale, branch)


def per_channel(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Per-channel ``values`` shaped and typed to broadcast over ``like`` (N, C, ...) on its channel axis."""
    return values.astype(like.dtype).reshape((1, -1) + (1,) * (like.ndim - 2))


def residual_landings(model: onnx.ModelProto, analysis: Analysis, consumers: Sequence[Consumer]) -> dict[str, Landing]:
    """Consumers whose output feeds only a two-branch Add (or two-input Sum) of equal shapes, directly or through a
    BatchNormalization with constant parameters and no zero scale that only it reads, by node name."""
    readers = tensor_readers(model)
    constants = {i.name: i for i in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    out: dict[str, Landing] = {}
    for c in consumers:
        nodes = readers.get(c.output, [])
        written, affine = c.output, (None, None)
        if len(nodes) == 1 and nodes[0].op_type == "BatchNormalization" and c.output not in graph_outputs:
            affine = _batch_norm_affine(nodes[0], constants)
            written = nodes[0].output[0]
            nodes = readers.get(written, []) if affine[0] is not None else []
        if len(nodes) != 1 or nodes[0].op_type not in ("Add", "Sum") or len(nodes[0].input) != 2:
            continue
        add = nodes[0]
        other = add.input[1] if add.input[0] == written else add.input[0]
        if other == written or other in constants or {c.output, written} & graph_outputs:
            continue
        if analysis.shapes.get(other) != analysis.shapes.get(c.output) or other not in analysis.layouts:
            continue
        out[c.node] = Landing(add.output[0], other, *affine)
    return out


def channel_affine(node: onnx.NodeProto, tensor: str, shape: tuple[int, ...],
                   constants: Mapping[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) (C,) of the per-channel affine map that ``node`` applies to ``tensor`` of ``shape`` (N, C, ...):
    an inference-mode BatchNormalization, or a Mul or Add of a constant that is one value or one per channel (it
    broadcasts as (1, C, 1, ...)); None for anything else, or a (nearly) zero scale."""
    channels = shape[1]
    if node.op_type == "BatchNormalization" and node.input[0] == tensor:
        scale, shift = _batch_norm_affine(node, constants)
        return None if scale is None else (scale, shift)
    if node.op_type not in ("Mul", "Add") or len(node.input) != 2 or tensor not in node.input:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    if other == tensor or other not in constants:
        return None
    value = numpy_helper.to_array(constants[other]).astype(np.float64)
    if value.size == 1:
        value = np.full(channels, float(value.reshape(())))
    elif value.ndim > len(shape) or (1,) * (len(shape) - value.ndim) + value.shape != \
            (1, channels) + (1,) * (len(shape) - 2):
        return None
    value = value.reshape(-1)
    if node.op_type == "Add":
        return np.ones(channels), value
    if not np.all(np.isfinite(value)) or np.any(np.abs(value) <= 1e-6 * np.abs(value).max(initial=0.0)):
        return None
    return value, np.zeros(channels)


def _batch_norm_affine(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto]
                       ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scale, shift) per channel of an inference-mode BatchNormalization, or (None, None) when its parameters are
    not constants, it has training outputs, or a scale is (nearly) zero: the consumer's output could not be recovered
    from the sum, or only with its error magnified a million times."""
    if len(node.output) > 1 and any(node.output[1:]) or not all(t in constants for t in node.input[1:5]):
        return None, None
    gamma, beta, mean, var = (numpy_helper.to_array(constants[t]).astype(np.float64) for t in node.input[1:5])
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    if not np.all(np.isfinite(scale)) or np.any(np.abs(scale) <= 1e-6 * np.abs(scale).max()):
        return None, None
    return scale, beta - scale * mean


def scalar_constants(model: onnx.ModelProto, constant_nodes: bool = True) -> dict[str, float]:
    """Single-valued initializers (and, with ``constant_nodes``, Constant outputs) by tensor name."""
    values = {i.name: i for i in model.graph.initializer if int(np.prod(i.dims)) == 1}
    if constant_nodes:
        values.update((n.output[0], n.attribute[0].t) for n in model.graph.node
                      if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"
                      and int(np.prod(n.attribute[0].t.dims)) == 1)
    return {name: float(numpy_helper.to_array(t).reshape(())) for name, t in values.items()}


def flat_bounds(node: onnx.NodeProto, scalars: Mapping[str, float]) -> tuple[float, float] | None:
    """(low, high) outside which a Relu or a Clip is flat (a Clip's bounds from ``scalars``, or attributes below
    opset 11; NaN for a bound computed at run time); None for other nodes."""
    if node.op_type == "Relu":
        return 0.0, np.inf
    if node.op_type != "Clip":
        return None
    bounds = [-np.inf, np.inf]
    for k, name in enumerate(node.input[1:3]):
        if name:
            bounds[k] = scalars.get(name, np.nan)
    for attr in node.attribute:   # opset < 11
        if attr.name in ("min", "max"):
            bounds[attr.name == "max"] = attr.f
    return bounds[0], bounds[1]


def rectified_sums(model: onnx.ModelProto, landings: Mapping[str, Landing]) -> set[str]:
    """The consumers of ``landings`` whose residual sum only a ReLU reads (Relu, or Clip from 0 up, its bound an
    initializer or an attribute)."""
    readers = tensor_readers(model)
    scalars = scalar_constants(model, constant_nodes=False)

    def rectifies(node: onnx.NodeProto) -> bool:
        bounds = flat_bounds(node, scalars)
        return bounds is not None and bounds[0] >= 0.0

    return {node for node, landing in landings.items()
            if (readers.get(landing.total) and all(rectifies(r) for r in readers[landing.total]))}


_LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _linear_reached(readers: Mapping[str, list[onnx.NodeProto]], tensor: str) -> set[str]:
    """Names of the Conv, ConvTranspose, Gemm and MatMul nodes first reached from ``tensor`` (not looking past them)."""
    stack, seen, reached = [tensor], {tensor}, set()
    while stack:
        for node in readers.get(stack.pop(), []):
            if node.op_type in _LINEAR_OPS:
                reached.add(node.name)
                continue
            fresh = [t for t in node.output if t not in seen]
            seen.update(fresh)
            stack.extend(fresh)
    return reached


def output_consumers(model: onnx.ModelProto, consumers: Sequence[Consumer]) -> set[str]:
    """Names of the consumers from whose output no Conv, ConvTranspose, Gemm or MatMul can be reached."""
    readers = tensor_readers(model)
    return {c.node for c in consumers if not _linear_reached(readers, c.output)}


def near_output_consumers(model: onnx.ModelProto, consumers: Sequence[Consumer], last: set[str]) -> set[str]:
    """Names of the consumers whose output reaches no linear node but the ``last`` consumers
    (:func:`output_consumers`): one re-fit away from the model's outputs (a DBNet head's first ConvTranspose, a
    YOLO class branch's middle conv, a classifier's conv head before its Gemm)."""
    readers = tensor_readers(model)
    near = set()
    for c in consumers:
        reached = _linear_reached(readers, c.output) if c.node not in last else set()
        if reached and reached <= last:
            near.add(c.node)
    return near


def landing_gains(analysis: Analysis, direct: Mapping[str, float]) -> dict[str, float]:
    """Gain c0/E(landing) per consumer node: measured for direct writers into a residual sum,
    inherited by a consumer whose output channels are read only by such writers (the first conv
    of a block, through the second), 1 otherwise."""
    gains: dict[str, float] = {}
    for g in analysis.groups:
        for c in g.consumers:
            gains[c.node] = direct.get(c.node, 1.0)
    for g in analysis.groups:
        downstream = [direct[c.node] for c in g.consumers if c.node in direct]
        if downstream and len(downstream) == len(g.consumers):
            for producer in g.producers:
                if producer in gains and producer not in direct:
                    gains[producer] = sum(downstream) / len(downstream)
    return gains
