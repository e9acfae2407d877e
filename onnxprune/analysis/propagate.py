"""Follow channel axes through an ONNX graph (DepGraph-style, on ONNX) and collect what must change together.

Every output channel of a producer (Conv, ConvTranspose, Gemm, MatMul with constant weights) gets a
label; channel j of every group of a grouped Conv shares one class, so groups shrink equally. Labels
flow forward through channel-preserving ops (depthwise Conv, per-channel normalisation, Resize,
Gather and LayerNormalization off the channel axis, ...); ops that combine tensors element-wise
(residual Add or Sum, SE Mul) unify the labels they align; Concat/Split/Slice/Pad/Reshape/Flatten/
Transpose map channel positions (a channel-last flatten tiles the labels). Union-find classes of
labels are the units that are kept or removed. Anything that cannot be proven safe (normalising
across channels, a grouped Conv's inputs, a Reshape that mixes channels with other axes, custom
domains, graph outputs) freezes the channels it touches, with the node and the reason.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper

from onnxprune.analysis.model import (
    ChannelRange, Consumer, Edit, Layout, SetGroup, ShapeDim, SliceInitializer,
)

UNARY = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Cast", "CastLike",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
    "Dropout", "Clip", "Not", "IsNaN", "IsInf",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where", "Equal",
               "Greater", "Less", "And", "Or"}
PER_CHANNEL_NORM = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
          "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum"}


def attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value (bytes decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class Propagation:
    """Mutable state of one analysis pass; see :func:`onnxprune.analysis.find_groups`."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray]):
        self.model = model
        self.opset = next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.shapes = shapes
        self.consts = consts
        self.layouts: dict[str, Layout] = {}
        self.parent: list[int] = []
        self.zero_label: list[bool] = []
        self.producer_of: list[str | None] = []
        self.frozen: dict[int, str] = {}
        self.consumers: list[Consumer] = []
        self.edits: list[Edit] = []
        self.members: dict[str, list[int]] = {}   # node → labels whose parameters it holds
        self.blocked: list[tuple[str, str, str]] = []
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        self.writer: dict[str, onnx.NodeProto] = {}   # tensor → the node that computes it
        for node in model.graph.node:
            for t in node.input:
                self.readers.setdefault(t, []).append(node)
            self.writer.update((t, node) for t in node.output)

    # ---- labels -------------------------------------------------------------------------------
    def fresh(self, n: int, producer: str | None = None, zero: bool = False) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.zero_label.extend([zero] * n)
        self.producer_of.extend([producer] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def freeze(self, layout: Layout | None, node: onnx.NodeProto | None, reason: str) -> None:
        if layout is None:
            return
        where = f"{node.op_type} '{node.name}'" if node is not None else "graph"
        text = f"{where}: {reason}"
        for lab in layout.labels.tolist():
            self.frozen.setdefault(lab, text)
        if node is not None:
            self.blocked.append((node.name, node.op_type, reason))

    # ---- helpers ------------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def member(self, node: onnx.NodeProto, layout: Layout) -> None:
        self.members.setdefault(node.name, []).extend(layout.labels.tolist())

    def tracked(self, node: onnx.NodeProto) -> list[tuple[int, Layout]]:
        return [(i, self.layouts[t]) for i, t in enumerate(node.input) if t in self.layouts]

    def opaque(self, node: onnx.NodeProto, reason: str | None = None) -> None:
        """Freeze every tracked input; outputs are untracked."""
        why = reason or f"op '{node.op_type}' is not supported for channel pruning"
        if node.domain not in ("", "ai.onnx"):
            why = f"custom-domain op '{node.domain}.{node.op_type}' cannot be analysed"
        for _, lay in self.tracked(node):
            self.freeze(lay, node, why)

    # ---- main loop ----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                self.opaque(node)
                continue
            rule = RULES.get(node.op_type)
            if rule is None:
                if node.op_type in UNARY:
                    rule = _unary
                elif node.op_type in ELEMENTWISE:
                    rule = _elementwise
                elif node.op_type in REDUCE:
                    rule = _reduce
            if rule is None:
                if self.tracked(node):
                    self.opaque(node)
                continue
            rule(self, node)
        for out in self.model.graph.output:
            if out.name in self.layouts:
                self.freeze(self.layouts[out.name], None, f"channels reach graph output '{out.name}'")


# ---- rules -----------------------------------------------------------------------------------
def _unary(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0]) if node.input else None
    if lay is None:
        return
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        p.freeze(lay, node, "MaxPool indices output depends on the channel count")
        return
    if node.op_type == "Clip" and any(t in p.layouts for t in node.input[1:]):
        p.opaque(node, "Clip bounds are computed tensors")
        return
    if node.op_type == "PRelu":
        _elementwise(p, node)
        return
    for out in node.output[:1]:
        p.layouts[out] = lay
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        p.layouts[node.output[1]] = lay


def _elementwise(p: Propagation, node: onnx.NodeProto) -> None:
    out_rank = p.rank(node.output[0])
    tracked = p.tracked(node)
    if not tracked:
        return
    if out_rank is None:
        for _, lay in tracked:
            p.freeze(lay, node, "output shape unknown")
        return
    if node.op_type in ("Where", "Equal", "Greater", "Less", "And", "Or") or (node.op_type == "Pow" and 0 not in dict(tracked)):
        p.opaque(node, f"{node.op_type} with channel-carrying operands is not supported")
        return
    aligned = {i: lay.axis + out_rank - p.rank(node.input[i]) for i, lay in tracked}
    first_i, first = tracked[0]
    axis = aligned[first_i]
    ok = all(aligned[i] == axis and len(lay.labels) == len(first.labels) and lay.repeat == first.repeat
             for i, lay in tracked)
    if not ok:
        for _, lay in tracked:
            p.freeze(lay, node, "operands carry channels on different axes or sizes")
        return
    for _, lay in tracked[1:]:
        p.unify(first.labels, lay.labels)
    out = Layout(axis, first.labels, first.repeat)
    for i, name in enumerate(node.input):
        if not name or name in p.layouts:
            continue
        shape = p.shapes.get(name)
        if shape is None:
            p.freeze(first, node, f"shape of operand '{name}' unknown")
            return
        dim_pos = len(shape) - (out_rank - axis)
        size = shape[dim_pos] if dim_pos >= 0 else 1
        if size == 1:
            continue
        if size != out.size:
            p.freeze(first, node, f"operand '{name}' broadcasts over channels with size {size}")
            return
        if p.const(name) is None:
            p.freeze(first, node, f"operand '{name}' is a computed tensor over the same channels")
            return
        p.edits.append(SliceInitializer(node.name, i, dim_pos, node.input[first_i], 1))
        p.member(node, out)
    p.layouts[node.output[0]] = out


def _norm(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    if lay.axis != 1 or lay.repeat != 1 or any(p.const(node.input[i]) is None for i in PER_CHANNEL_NORM[node.op_type] if i < len(node.input)):
        p.freeze(lay, node, "normalisation parameters are not per-channel constants on axis 1")
        return
    for i in PER_CHANNEL_NORM[node.op_type]:
        if i < len(node.input) and node.input[i]:
            p.edits.append(SliceInitializer(node.name, i, 0, node.input[0]))
    p.member(node, lay)
    p.layouts[node.output[0]] = lay


def _conv(p: Propagation, node: onnx.NodeProto) -> None:
    w = p.const(node.input[1])
    lay = p.layouts.get(node.input[0])
    if w is None:
        p.opaque(node, "convolution weights are not constant")
        return
    group = int(attr(node, "group", 1))
    if lay is not None and (lay.axis != 1 or lay.repeat != 1 or w.ndim not in (3, 4)):
        p.freeze(lay, node, "input channels are not on axis 1 of a 1-D/2-D convolution")
        lay = None
    if lay is not None and group > 1 and group == w.shape[0] == len(lay.labels) and w.shape[1] == 1:
        # depthwise: input channel c is output channel c, so the group passes through and prunes its filters
        p.layouts[node.output[0]] = lay
        _slice_outputs(p, node, 0)
        p.edits.append(SetGroup(node.name, node.output[0]))
        p.member(node, lay)
        return
    if lay is not None and group == 1:
        p.consumers.append(Consumer(node.name, "Conv", node.input[0], node.output[0], node.input[1],
                                    int(np.prod(w.shape[2:]))))
        p.edits.append(SliceInitializer(node.name, 1, 1, node.input[0]))
    elif lay is not None:
        p.freeze(lay, node, f"grouped convolution (group={group}) keeps its input channels: "
                            "a re-fit that stays within each group is not supported")
    p.layouts[node.output[0]] = Layout(1, _grouped_labels(p, w.shape[0], group, node.name))
    _slice_outputs(p, node, 0)


def _conv_transpose(p: Propagation, node: onnx.NodeProto) -> None:
    """ConvTranspose, weight [C_in, C_out/group, k...]: a consumer on axis 0, a producer on axis 1."""
    w = p.const(node.input[1])
    lay = p.layouts.get(node.input[0])
    group = int(attr(node, "group", 1))
    if w is None or group != 1:
        p.opaque(node, "ConvTranspose with computed weights or group > 1 is not supported")
        return
    if lay is not None:
        why = _transpose_geometry(p, node, w.shape[2:])
        if lay.axis != 1 or lay.repeat != 1 or w.ndim not in (3, 4):
            p.freeze(lay, node, "input channels are not on axis 1 of a 1-D/2-D transposed convolution")
        elif why:
            p.freeze(lay, node, why)
        else:
            p.consumers.append(Consumer(node.name, "ConvTranspose", node.input[0], node.output[0], node.input[1],
                                        int(np.prod(w.shape[2:]))))
            p.edits.append(SliceInitializer(node.name, 1, 0, node.input[0]))
    p.layouts[node.output[0]] = Layout(1, p.fresh(w.shape[1], node.name))
    _slice_outputs(p, node, 1)


def _transpose_geometry(p: Propagation, node: onnx.NodeProto, kernel: tuple[int, ...]) -> str | None:
    """Why a ConvTranspose cannot be re-fitted as the equivalent Conv, or None when it can (explicit pads)."""
    if attr(node, "auto_pad", "NOTSET") != "NOTSET" or attr(node, "output_shape") is not None:
        return "ConvTranspose with auto_pad or output_shape is not re-fitted"
    src, dst = p.shapes.get(node.input[0]), p.shapes.get(node.output[0])
    if src is None or dst is None:
        return "ConvTranspose with unknown shapes"
    nd = len(kernel)
    strides = attr(node, "strides", [1] * nd)
    dilations = attr(node, "dilations", [1] * nd)
    pads = attr(node, "pads", [0] * 2 * nd)
    extra = attr(node, "output_padding", [0] * nd)
    size = [s * (i - 1) + e + (k - 1) * d + 1 - pads[j] - pads[nd + j]
            for j, (s, i, e, k, d) in enumerate(zip(strides, src[2:], extra, kernel, dilations))]
    return None if tuple(size) == tuple(dst[2:]) else "ConvTranspose output size does not follow from its pads"


def _grouped_labels(p: Propagation, n: int, group: int, producer: str) -> np.ndarray:
    """Fresh labels for ``n`` output channels; with groups, channel j of every group shares a class (equal pruning)."""
    labels = p.fresh(n, producer)
    per_group = labels.reshape(group, n // group)
    for row in per_group[1:]:
        p.unify(per_group[0], row)
    return labels


def _slice_outputs(p: Propagation, node: onnx.NodeProto, weight_axis: int) -> None:
    """Output channels of a Conv/ConvTranspose follow its output's mask: weight ``weight_axis`` and bias."""
    p.edits.append(SliceInitializer(node.name, 1, weight_axis, node.output[0]))
    if len(node.input) > 2 and node.input[2]:
        p.edits.append(SliceInitializer(node.name, 2, 0, node.output[0]))


def _gemm(p: Propagation, node: onnx.NodeProto) -> None:
    w = p.const(node.input[1])
    lay = p.layouts.get(node.input[0])
    if w is None or int(attr(node, "transA", 0)):
        p.opaque(node, "Gemm with computed weights or transA=1 is not supported")
        return
    trans_b = int(attr(node, "transB", 0))
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    if lay is not None:
        if lay.axis != 1:
            p.freeze(lay, node, "channels are not on the Gemm's feature axis")
        else:
            p.consumers.append(Consumer(node.name, "Gemm", node.input[0], node.output[0], node.input[1], 1))
            p.edits.append(SliceInitializer(node.name, 1, in_axis, node.input[0], lay.repeat))
    n_out = w.shape[out_axis]
    p.layouts[node.output[0]] = Layout(1, p.fresh(n_out, node.name))
    p.edits.append(SliceInitializer(node.name, 1, out_axis, node.output[0]))
    if len(node.input) > 2 and node.input[2]:
        c = p.const(node.input[2])
        if c is not None and c.ndim >= 1 and c.shape[-1] == n_out:
            p.edits.append(SliceInitializer(node.name, 2, c.ndim - 1, node.output[0]))
        elif c is None or c.size != 1:
            p.layouts.pop(node.output[0])
            p.opaque(node, "Gemm bias is not a per-output constant")


def _matmul(p: Propagation, node: onnx.NodeProto) -> None:
    w = p.const(node.input[1])
    lay = p.layouts.get(node.input[0])
    if w is None or w.ndim != 2 or node.input[1] in p.layouts:
        p.opaque(node, "MatMul without a constant 2-D right operand is not supported")
        return
    rank = p.rank(node.input[0])
    if lay is not None:
        if rank is None or lay.axis != rank - 1:
            p.freeze(lay, node, "channels are not on the MatMul's last (feature) axis")
        else:
            p.consumers.append(Consumer(node.name, "MatMul", node.input[0], node.output[0], node.input[1], 1))
            p.edits.append(SliceInitializer(node.name, 1, 0, node.input[0], lay.repeat))
    out_rank = p.rank(node.output[0]) or max(rank or 2, 2)
    p.layouts[node.output[0]] = Layout(out_rank - 1, p.fresh(w.shape[1], node.name))
    p.edits.append(SliceInitializer(node.name, 1, 1, node.output[0]))


def _layer_norm(p: Propagation, node: onnx.NodeProto) -> None:
    """LayerNormalization over axes [axis, rank): channel-preserving unless the channel axis is normalised."""
    lay = p.layouts.get(node.input[0])
    rank = p.rank(node.input[0])
    if lay is None or rank is None:
        if lay is not None:
            p.freeze(lay, node, "input rank unknown")
        return
    if lay.axis >= int(attr(node, "axis", -1)) % rank:
        p.freeze(lay, node, "normalises across the channel axis: removing a channel changes the mean and "
                            "variance seen by every other channel")
    p.layouts[node.output[0]] = lay


LRN_REASON = ("normalises each channel by its neighbours (local response normalisation): removing a channel "
              "changes the neighbours' normalisation")


def _lrn(p: Propagation, node: onnx.NodeProto) -> None:
    """LRN: the channels pass through, frozen."""
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    p.freeze(lay, node, LRN_REASON)
    p.layouts[node.output[0]] = lay


def _group_norm(p: Propagation, node: onnx.NodeProto) -> None:
    """GroupNormalization-21: each group of C/G consecutive channels is one class, kept or removed whole.

    Removing a whole group leaves the other groups' statistics unchanged; the per-channel scale and bias
    are sliced and ``num_groups`` follows the kept channel count.
    """
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    p.layouts[node.output[0]] = lay
    groups, n = int(attr(node, "num_groups", 0)), len(lay.labels)
    if p.opset < 21:
        p.freeze(lay, node, "normalises over groups of channels with per-group scale/bias (opset < 21): "
                            "only opset-21 GroupNormalization is pruned by whole groups")
        return
    if lay.axis != 1 or lay.repeat != 1 or groups < 1 or n % groups or \
            any(p.const(node.input[i]) is None for i in (1, 2)):
        p.freeze(lay, node, "normalises over groups of channels, which are not whole groups of constant-scaled "
                            "channels on axis 1: removing a channel changes its group's statistics")
        return
    size = n // groups
    for row in lay.labels.reshape(groups, size):
        p.unify(np.full(size, row[0]), row)
    for i in (1, 2):
        p.edits.append(SliceInitializer(node.name, i, 0, node.input[0]))
    p.edits.append(SetGroup(node.name, node.input[0], "num_groups", size))
    p.member(node, lay)


def _gather(p: Propagation, node: onnx.NodeProto) -> None:
    """Gather along a non-channel axis keeps the channels (the axis moves by the indices' rank minus one)."""
    lay = p.layouts.get(node.input[0])
    if node.input[1] in p.layouts:
        p.opaque(node, "Gather indices carry channels")
        return
    if lay is None:
        return
    rank, index_shape = p.rank(node.input[0]), p.shapes.get(node.input[1])
    if rank is None or index_shape is None:
        p.freeze(lay, node, "shapes unknown")
        return
    axis = int(attr(node, "axis", 0)) % rank
    if axis == lay.axis:
        p.freeze(lay, node, "Gather selects along the channel axis")
        return
    new = lay.axis if lay.axis < axis else lay.axis + len(index_shape) - 1
    p.layouts[node.output[0]] = Layout(new, lay.labels, lay.repeat)


def _flatten(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    shape = p.shapes.get(node.input[0])
    if lay is None:
        return
    if shape is None:
        p.freeze(lay, node, "input shape unknown")
        return
    f = int(attr(node, "axis", 1))
    f = f + len(shape) if f < 0 else f
    tile = int(np.prod(shape[f:lay.axis]))
    if lay.axis < f or (tile > 1 and f == 0):
        p.freeze(lay, node, "Flatten mixes channels with other axes")
        return
    inner = int(np.prod(shape[lay.axis + 1:]))
    p.layouts[node.output[0]] = Layout(1, np.tile(lay.labels, tile), lay.repeat * inner)


def _reshape(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    src, dst = p.shapes.get(node.input[0]), p.shapes.get(node.output[0])
    target = p.const(node.input[1]) if len(node.input) > 1 else np.asarray(attr(node, "shape", []))
    computed = target is None and len(node.input) > 1
    if computed:
        target = _concat_pieces(p, node.input[1], lay)
    if src is None or dst is None or target is None:
        p.freeze(lay, node, "Reshape with unknown shapes")
        return
    outer = int(np.prod(src[:lay.axis]))
    inner = lay.repeat * int(np.prod(src[lay.axis + 1:]))
    n = len(lay.labels)
    for b in range(len(dst)):
        before = int(np.prod(dst[:b]))
        tile = outer // before if outer % before == 0 else 0   # axes before the channels merged into dim b
        if tile > 1 and (b == 0 or dst[0] != src[0]):
            continue  # merged with the batch axis, the tiling would change with the batch size
        if tile and dst[b] % (tile * n) == 0 and dst[b] >= tile * n and \
                dst[b] // (tile * n) * int(np.prod(dst[b + 1:])) == inner:
            value = target[b] if b < len(target) else -1
            if value == CHANNELS and tile == 1:
                p.layouts[node.output[0]] = Layout(b, lay.labels, dst[b] // n)
                return  # the target reads the kept channel count at run time
            if value is None or value == CHANNELS or (computed and value != -1) or (value == 0 and b != lay.axis):
                break  # a computed or copied dimension at the channel position cannot be rewritten
            if value > 0:
                p.edits.append(ShapeDim(node.name, 1, b, node.output[0]))
            p.layouts[node.output[0]] = Layout(b, np.tile(lay.labels, tile), dst[b] // (tile * n))
            return
    grouped = any(int(np.prod(dst[:b])) == outer and 1 < dst[b] < n and n % dst[b] == 0 for b in range(len(dst)))
    hint = " (splits the channels into groups: a GroupNorm or channel-shuffle pattern)" if grouped else ""
    p.freeze(lay, node, f"Reshape {list(src)} -> {list(dst)} mixes channels with other axes{hint}")


def _concat_pieces(p: Propagation, name: str, lay: Layout | None = None) -> list[int | str | None] | None:
    """Values of a shape tensor built by Concat of 1-D pieces: ints where a piece is constant, None where computed,
    and :data:`CHANNELS` where it reads the channel dim of a tensor laid out as ``lay`` (Shape → Gather, as the
    TorchScript exporter writes ``x.size(1)``): that piece follows the pruning by itself."""
    node = p.writer.get(name)
    if node is None or node.op_type != "Concat":
        return None
    values: list[int | str | None] = []
    for piece in node.input:
        c = p.const(piece)
        if c is not None:
            values.extend(int(v) for v in np.atleast_1d(c).tolist())
        elif lay is not None and _reads_channel_dim(p, piece, lay):
            values.append(CHANNELS)
        elif piece in p.shapes and len(p.shapes[piece]) == 1:
            values.extend([None] * p.shapes[piece][0])
        else:
            return None
    return values


CHANNELS = "channels"  # a shape piece that is the run-time channel count


def _reads_channel_dim(p: Propagation, name: str, lay: Layout) -> bool:
    """Whether ``name`` is Gather(Shape(t), [c]) (through Unsqueeze/Cast) with t laid out as ``lay`` and c its
    channel axis, so that it is the number of channels kept."""
    node = p.writer.get(name)
    while node is not None and node.op_type in ("Unsqueeze", "Cast"):
        node = p.writer.get(node.input[0])
    if node is None or node.op_type != "Gather" or attr(node, "axis", 0) != 0:
        return False
    shape = p.writer.get(node.input[0])
    index = p.const(node.input[1])
    if shape is None or shape.op_type != "Shape" or index is None or np.size(index) != 1:
        return False
    source = p.layouts.get(shape.input[0])
    axis = int(np.ravel(index)[0]) + int(attr(shape, "start", 0) or 0)
    return source is not None and source.axis == axis and source.repeat == 1 and lay.repeat == 1 and \
        np.array_equal(source.labels, lay.labels)


def _transpose(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    rank = p.rank(node.input[0])
    perm = attr(node, "perm", None) or list(range(rank - 1, -1, -1)) if rank else None
    if perm is None:
        p.freeze(lay, node, "input rank unknown")
        return
    p.layouts[node.output[0]] = Layout(list(perm).index(lay.axis), lay.labels, lay.repeat)


def _axes(p: Propagation, node: onnx.NodeProto, input_index: int) -> list[int] | None:
    value = attr(node, "axes", None)
    if value is None and len(node.input) > input_index and node.input[input_index]:
        c = p.const(node.input[input_index])
        value = None if c is None else c.tolist()
    return None if value is None else [int(a) for a in np.atleast_1d(value)]


def _squeeze(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    in_rank, out_rank = p.rank(node.input[0]), p.rank(node.output[0])
    axes = _axes(p, node, 1)
    if in_rank is None or out_rank is None:
        p.freeze(lay, node, "rank unknown")
        return
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(p.shapes[node.input[0]]) if d == 1]
        axes = [a % in_rank for a in axes]
        if lay.axis in axes:
            p.freeze(lay, node, "squeezes the channel axis")
            return
        p.layouts[node.output[0]] = Layout(lay.axis - sum(a < lay.axis for a in axes), lay.labels, lay.repeat)
    else:
        axes = sorted(a % out_rank for a in (axes or []))
        new = lay.axis
        for a in axes:
            if a <= new:
                new += 1
        p.layouts[node.output[0]] = Layout(new, lay.labels, lay.repeat)


def _reduce(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    rank = p.rank(node.input[0])
    axes = _axes(p, node, 1)
    if rank is None:
        p.freeze(lay, node, "rank unknown")
        return
    if not axes:
        if int(attr(node, "noop_with_empty_axes", 0)):
            p.layouts[node.output[0]] = lay
        else:
            p.freeze(lay, node, "reduces over all axes, channels included")
        return
    axes = [a % rank for a in axes]
    if lay.axis in axes:
        p.freeze(lay, node, "reduces over the channel axis")
        return
    keep = int(attr(node, "keepdims", 1))
    axis = lay.axis if keep else lay.axis - sum(a < lay.axis for a in axes)
    p.layouts[node.output[0]] = Layout(axis, lay.labels, lay.repeat)


def _softmax(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    rank = p.rank(node.input[0]) or 0
    default = -1 if p.opset >= 13 else 1
    axis = int(attr(node, "axis", default)) % max(rank, 1)
    mixes = lay.axis == axis if p.opset >= 13 else lay.axis >= axis
    if mixes:
        p.freeze(lay, node, "normalises across the channel axis")
        return
    p.layouts[node.output[0]] = lay


def _slice_params(p: Propagation, node: onnx.NodeProto, rank: int):
    if p.opset < 10:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes, steps = attr(node, "axes", list(range(len(starts)))), [1] * len(starts)
    else:
        vals = [p.const(t) if i < len(node.input) and t else None for i, t in enumerate(list(node.input[1:5]) + [""] * 4)][:4]
        if vals[0] is None or vals[1] is None:
            return None
        starts, ends = vals[0].tolist(), vals[1].tolist()
        axes = vals[2].tolist() if vals[2] is not None else list(range(len(starts)))
        steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
    return [(int(a) % rank, int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps)]


def _slice(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    rank = p.rank(node.input[0])
    params = _slice_params(p, node, rank) if rank else None
    if params is None:
        p.freeze(lay, node, "Slice bounds are not constant")
        return
    on_axis = [q for q in params if q[0] == lay.axis]
    if not on_axis:
        p.layouts[node.output[0]] = lay
        return
    _, start, end, step = on_axis[0]
    if step != 1 or lay.repeat != 1:
        p.freeze(lay, node, "Slice on the channel axis with a step is not supported")
        return
    idx = np.arange(len(lay.labels))[slice(start, end)]
    p.layouts[node.output[0]] = Layout(lay.axis, lay.labels[idx])
    p.edits.append(ChannelRange(node.name, lay.axis))


def _split(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    rank = p.rank(node.input[0])
    axis = int(attr(node, "axis", 0)) % rank
    if axis != lay.axis:
        for out in node.output:
            p.layouts[out] = lay
        return
    sizes = [p.shapes.get(o, (None,) * rank)[axis] for o in node.output]
    if lay.repeat != 1 or any(s is None for s in sizes):
        p.freeze(lay, node, "Split on the channel axis with unknown sizes")
        return
    start = 0
    for out, size in zip(node.output, sizes):
        p.layouts[out] = Layout(axis, lay.labels[start:start + size])
        start += size
    p.edits.append(ChannelRange(node.name, axis))


def _concat(p: Propagation, node: onnx.NodeProto) -> None:
    tracked = p.tracked(node)
    if not tracked:
        return
    rank = p.rank(node.output[0])
    axis = int(attr(node, "axis", 0)) % rank
    if all(lay.axis == axis and lay.repeat == 1 for _, lay in tracked):
        parts = []
        for name in node.input:
            if name in p.layouts:
                parts.append(p.layouts[name].labels)
            else:
                extra = p.fresh(p.shapes[name][axis])
                p.freeze(Layout(axis, extra), node, f"input '{name}' has untracked channels")
                parts.append(extra)
        p.layouts[node.output[0]] = Layout(axis, np.concatenate(parts))
        return
    if len(tracked) == len([t for t in node.input if t]) and all(lay.axis != axis for _, lay in tracked):
        _elementwise_like_concat(p, node, tracked)
        return
    for _, lay in tracked:
        p.freeze(lay, node, "Concat mixes channel-carrying and untracked inputs off the channel axis")


def _elementwise_like_concat(p: Propagation, node: onnx.NodeProto, tracked: list[tuple[int, Layout]]) -> None:
    first = tracked[0][1]
    if any(lay.axis != first.axis or len(lay.labels) != len(first.labels) or lay.repeat != first.repeat
           for _, lay in tracked):
        for _, lay in tracked:
            p.freeze(lay, node, "Concat inputs carry different channels")
        return
    for _, lay in tracked[1:]:
        p.unify(first.labels, lay.labels)
    p.layouts[node.output[0]] = first


def _pad(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    rank = p.rank(node.input[0])
    pads = attr(node, "pads") if p.opset < 11 else (p.const(node.input[1]) if len(node.input) > 1 else None)
    if pads is None:
        p.freeze(lay, node, "Pad amounts are not constant")
        return
    pads = [int(v) for v in np.asarray(pads).tolist()]
    axes = list(range(rank))
    if p.opset >= 18 and len(node.input) > 3 and node.input[3]:
        c = p.const(node.input[3])
        if c is None:
            p.freeze(lay, node, "Pad axes are not constant")
            return
        axes = [int(a) % rank for a in c.tolist()]
    half = len(pads) // 2
    before = dict(zip(axes, pads[:half]))
    after = dict(zip(axes, pads[half:]))
    b, a = before.get(lay.axis, 0), after.get(lay.axis, 0)
    if b == 0 and a == 0:
        p.layouts[node.output[0]] = lay
        return
    value = attr(node, "value", 0.0) if p.opset < 11 else (p.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0)
    mode = attr(node, "mode", "constant")
    if mode != "constant" or value is None or float(np.asarray(value).reshape(-1)[0] if np.size(value) else 0.0) != 0.0 \
            or b < 0 or a < 0 or lay.repeat != 1:
        p.freeze(lay, node, "Pad on the channel axis must add zero channels")
        return
    labels = np.concatenate([p.fresh(b, zero=True), lay.labels, p.fresh(a, zero=True)])
    p.layouts[node.output[0]] = Layout(lay.axis, labels)
    p.edits.append(ChannelRange(node.name, lay.axis))


def _resize(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    src, dst = p.shapes.get(node.input[0]), p.shapes.get(node.output[0])
    if src is None or dst is None or src[lay.axis] != dst[lay.axis]:
        p.freeze(lay, node, "resizes the channel axis")
        return
    sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
    if sizes:
        axes = [int(a) % len(src) for a in attr(node, "axes", range(len(src)))]
        if p.const(sizes) is None:
            p.freeze(lay, node, "Resize sizes are computed and may bake in the channel count")
            return
        if lay.axis in axes:
            p.edits.append(ShapeDim(node.name, 3, axes.index(lay.axis), node.output[0]))
    p.layouts[node.output[0]] = lay


def _shape(p: Propagation, node: onnx.NodeProto) -> None:
    lay = p.layouts.get(node.input[0])
    if lay is None:
        return
    start, end = int(attr(node, "start", 0)), attr(node, "end", None)
    rank = p.rank(node.input[0]) or 0
    lo, hi = start % rank if rank else 0, (int(end) % rank if end is not None and int(end) < rank else rank)
    if not (lo <= lay.axis < hi):
        return
    for reader in p.readers.get(node.output[0], []):
        idx = p.const(reader.input[1]) if reader.op_type == "Gather" and len(reader.input) > 1 else None
        if idx is None or idx.ndim > 1 or (lay.axis - lo) in [int(i) % (hi - lo) for i in np.atleast_1d(idx)]:
            p.freeze(lay, node, "the channel count is read by a shape computation")
            return


RULES: dict[str, Callable[[Propagation, onnx.NodeProto], None]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "LRN": _lrn,
    "Gather": _gather,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _norm,
    "InstanceNormalization": _norm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Hardmax": _softmax,
    "Slice": _slice,
    "Split": _split,
    "Concat": _concat,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Shape": _shape,
    "Constant": lambda p, n: None,
}
