"""An ONNX graph run by torch, so that gradients reach its weights (the ``--distil`` stage).

:class:`TorchGraph` evaluates the nodes of a float32 ONNX model in order with torch operations; the weight and bias
initializers of its Conv, ConvTranspose, Gemm and MatMul nodes are trainable parameters, every other initializer and
``Constant`` a fixed tensor. Shape arithmetic (Shape, Gather, Concat of sizes…) runs on the real tensors, so dynamic
axes need nothing special. Only the operators listed in ``OPS`` are known; :func:`unsupported` names the others
before anything runs. torch is imported here, never by modules that do not need it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

TRAINED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # whose initializer inputs become parameters


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _same_pads(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               upper: bool) -> list[int]:
    """ONNX pads (begins, then ends) of auto_pad SAME_UPPER / SAME_LOWER for input ``x``."""
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _torch_pads(pads: Sequence[int], rank: int) -> list[int]:
    """ONNX pads (begins, then ends, first axis first) as ``F.pad`` takes them (last axis first, begin and end)."""
    return [p for k in reversed(range(rank)) for p in (pads[k], pads[k + rank])]


def _conv(i, a, transposed: bool = False):
    x, w = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    rank = w.dim() - 2
    strides = a.get("strides", [1] * rank)
    dilations = a.get("dilations", [1] * rank)
    kernel = a.get("kernel_shape", list(w.shape[2:]))
    pads = a.get("pads", [0] * 2 * rank)
    auto = a.get("auto_pad", b"NOTSET").decode()
    if auto in ("SAME_UPPER", "SAME_LOWER") and not transposed:
        pads = _same_pads(x, kernel, strides, dilations, auto == "SAME_UPPER")
    group = a.get("group", 1)
    if transposed:
        run = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
        out = run(x, w, bias, strides, 0, a.get("output_padding", [0] * rank), group, dilations)
        crop = tuple(slice(None, None) for _ in range(2)) + tuple(
            slice(b, out.shape[2 + k] - e) for k, (b, e) in enumerate(zip(pads[:rank], pads[rank:])))
        return out[crop]
    if pads[:rank] != pads[rank:]:   # uneven padding: pad first (torch pads both sides alike)
        x = F.pad(x, _torch_pads(pads, rank))
        pads = [0] * 2 * rank
    run = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return run(x, w, bias, strides, pads[:rank], dilations, group)


def _pool(i, a, kind: str):
    x = i[0]
    rank = x.dim() - 2
    kernel = a["kernel_shape"]
    strides = a.get("strides", [1] * rank)
    pads = a.get("pads", [0] * 2 * rank)
    auto = a.get("auto_pad", b"NOTSET").decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x, kernel, strides, [1] * rank, auto == "SAME_UPPER")
    ceil = bool(a.get("ceil_mode", 0))
    if pads[:rank] != pads[rank:]:
        fill = -math.inf if kind == "max" else 0.0
        x = F.pad(x, _torch_pads(pads, rank), value=fill)
        pads = [0] * 2 * rank
    if kind == "max":
        run = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
        return run(x, kernel, strides, pads[:rank], a.get("dilations", [1] * rank), ceil)
    run = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    return run(x, kernel, strides, pads[:rank], ceil, bool(a.get("count_include_pad", 0)))


def _gemm(i, a):
    A = i[0].transpose(0, 1) if a.get("transA", 0) else i[0]
    B = i[1].transpose(0, 1) if a.get("transB", 0) else i[1]
    y = a.get("alpha", 1.0) * (A @ B)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return y


def _clip(i, a):
    low = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    high = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    return torch.clamp(i[0], None if low is None else float(low), None if high is None else float(high))


def _slice(i, a):
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    x = i[0]
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[axis]
        if step < 0:
            return torch.flip(x, [axis])[_reverse_slice(index, axis, size, start, end, step)]
        index[axis] = slice(max(min(start, size), -size), max(min(end, size), -size - 1), step)
    return x[tuple(index)]


def _reverse_slice(index, axis, size, start, end, step):
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    start, end = min(start, size - 1), max(end, -1)
    index[axis] = slice(size - 1 - start, size - 1 - end, -step)
    return tuple(index)


def _pad(i, a):
    x = i[0]
    pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else a["pads"]
    count = len(pads) // 2
    axes = [v % x.dim() for v in _ints(i[3])] if len(i) > 3 and i[3] is not None else list(range(count))
    begins, ends = dict(zip(axes, pads[:count])), dict(zip(axes, pads[count:]))
    flat = [p for axis in reversed(range(x.dim())) for p in (begins.get(axis, 0), ends.get(axis, 0))]
    while flat[-2:] == [0, 0]:   # torch pads from the last axis: leave untouched leading axes out
        flat = flat[:-2]
    mode = a.get("mode", b"constant").decode()
    if mode == "constant":
        value = float(i[2]) if len(i) > 2 and i[2] is not None and i[2].numel() else a.get("value", 0.0)
        return F.pad(x, flat, value=value)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _resize(i, a, node):
    x = i[0]
    mode = a.get("mode", b"nearest").decode()
    if node.op_type == "Upsample":
        scales, sizes = i[1], None
    else:
        scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
        sizes = _ints(i[3]) if len(i) > 3 and i[3] is not None and i[3].numel() else None
    sizes = sizes[2:] if sizes is not None else [int(math.floor(d * float(s))) for d, s in zip(x.shape[2:], scales[2:])]
    if mode == "nearest":
        # every ONNX rounding of nearest agrees with torch's where each output size is a whole multiple of the input's
        if any(out % size for out, size in zip(sizes, x.shape[2:])):
            raise NotImplementedError("Resize (nearest) by a factor that is not a whole number")
        return F.interpolate(x, size=sizes, mode="nearest")
    transform = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    if mode != "linear" or transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise NotImplementedError(f"Resize ({mode}, {transform})")
    return F.interpolate(x, size=sizes, mode=("linear", "bilinear", "trilinear")[x.dim() - 3],
                         align_corners=transform == "align_corners")


def _split(i, a, node):
    axis = a.get("axis", 0)
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if sizes is None:
        n = len(node.output)
        sizes = [math.ceil(i[0].shape[axis] / n)] * n
    return list(torch.split(i[0], sizes, axis))


def _axes(i, a) -> list[int] | None:
    if len(i) > 1 and i[1] is not None:
        return _ints(i[1])
    return a.get("axes")


def _squeeze(i, a):
    axes = _axes(i, a)
    x = i[0]
    if axes is None:
        return x.squeeze()
    for axis in sorted((v % x.dim() for v in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _unsqueeze(i, a):
    axes = _axes(i, a)
    x = i[0]
    rank = x.dim() + len(axes)
    for axis in sorted(v % rank for v in axes):
        x = x.unsqueeze(axis)
    return x


def _reduce(run: Callable, i, a):
    axes = _axes(i, a) or list(range(i[0].dim()))
    return run(i[0], tuple(axes), bool(a.get("keepdims", 1)))


def _reshape(i, a):
    shape = _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [i[0].shape[k] if v == 0 else v for k, v in enumerate(shape)]
    return i[0].reshape(shape)


def _flatten(i, a):
    axis = a.get("axis", 1) % max(i[0].dim(), 1)
    return i[0].reshape(int(np.prod(i[0].shape[:axis])), -1)


def _gather(i, a):
    axis = a.get("axis", 0)
    index = i[1].long()
    index = torch.where(index < 0, index + i[0].shape[axis], index)
    axis %= i[0].dim()
    shape = [*i[0].shape[:axis], *index.shape, *i[0].shape[axis + 1:]]
    return torch.index_select(i[0], axis, index.reshape(-1)).reshape(shape)


def _divide(i, a):
    if i[0].is_floating_point() or i[1].is_floating_point():
        return i[0] / i[1]
    return torch.div(i[0], i[1], rounding_mode="trunc")


def _batch_norm(i, a):
    return F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a.get("epsilon", 1e-5))


def _layer_norm(i, a):
    axis = a.get("axis", -1) % i[0].dim()
    shape = i[0].shape[axis:]
    return F.layer_norm(i[0], shape, i[1].reshape(shape), None if len(i) < 3 or i[2] is None else i[2].reshape(shape),
                        a.get("epsilon", 1e-5))


def _cast(i, a):
    kind = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
    return i[0].to(torch.from_numpy(np.zeros(0, kind)).dtype)


OPS: dict[str, Callable] = {
    "Conv": lambda i, a, n: _conv(i, a),
    "ConvTranspose": lambda i, a, n: _conv(i, a, transposed=True),
    "Gemm": lambda i, a, n: _gemm(i, a),
    "MatMul": lambda i, a, n: i[0] @ i[1],
    "Relu": lambda i, a, n: F.relu(i[0]),
    "LeakyRelu": lambda i, a, n: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "PRelu": lambda i, a, n: torch.where(i[0] >= 0, i[0], i[0] * i[1]),
    "Clip": lambda i, a, n: _clip(i, a),
    "Sigmoid": lambda i, a, n: torch.sigmoid(i[0]),
    "HardSigmoid": lambda i, a, n: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda i, a, n: F.hardswish(i[0]),
    "Tanh": lambda i, a, n: torch.tanh(i[0]),
    "Exp": lambda i, a, n: torch.exp(i[0]),
    "Log": lambda i, a, n: torch.log(i[0]),
    "Erf": lambda i, a, n: torch.erf(i[0]),
    "Sqrt": lambda i, a, n: torch.sqrt(i[0]),
    "Neg": lambda i, a, n: -i[0],
    "Abs": lambda i, a, n: torch.abs(i[0]),
    "Reciprocal": lambda i, a, n: 1.0 / i[0],
    "Softmax": lambda i, a, n: torch.softmax(i[0], a.get("axis", -1)),
    "LogSoftmax": lambda i, a, n: torch.log_softmax(i[0], a.get("axis", -1)),
    "Add": lambda i, a, n: i[0] + i[1],
    "Sub": lambda i, a, n: i[0] - i[1],
    "Mul": lambda i, a, n: i[0] * i[1],
    "Div": lambda i, a, n: _divide(i, a),
    "Pow": lambda i, a, n: torch.pow(i[0], i[1]),
    "Max": lambda i, a, n: _fold(torch.maximum, i),
    "Min": lambda i, a, n: _fold(torch.minimum, i),
    "Sum": lambda i, a, n: _fold(torch.add, i),
    "BatchNormalization": lambda i, a, n: _batch_norm(i, a),
    "LayerNormalization": lambda i, a, n: _layer_norm(i, a),
    "MaxPool": lambda i, a, n: _pool(i, a, "max"),
    "AveragePool": lambda i, a, n: _pool(i, a, "average"),
    "GlobalAveragePool": lambda i, a, n: i[0].mean(tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda i, a, n: i[0].amax(tuple(range(2, i[0].dim())), keepdim=True),
    "ReduceMean": lambda i, a, n: _reduce(torch.mean, i, a),
    "ReduceSum": lambda i, a, n: _reduce(torch.sum, i, a),
    "ReduceMax": lambda i, a, n: _reduce(torch.amax, i, a),
    "Flatten": lambda i, a, n: _flatten(i, a),
    "Reshape": lambda i, a, n: _reshape(i, a),
    "Transpose": lambda i, a, n: i[0].permute(*(a.get("perm") or reversed(range(i[0].dim())))),
    "Squeeze": lambda i, a, n: _squeeze(i, a),
    "Unsqueeze": lambda i, a, n: _unsqueeze(i, a),
    "Concat": lambda i, a, n: torch.cat([t for t in i if t is not None], a["axis"]),
    "Split": lambda i, a, n: _split(i, a, n),
    "Slice": lambda i, a, n: _slice(i, a),
    "Pad": lambda i, a, n: _pad(i, a),
    "Resize": lambda i, a, n: _resize(i, a, n),
    "Upsample": lambda i, a, n: _resize(i, a, n),
    "Shape": lambda i, a, n: torch.tensor(i[0].shape, dtype=torch.int64)[a.get("start", 0):a.get("end")],
    "Gather": lambda i, a, n: _gather(i, a),
    "Cast": lambda i, a, n: _cast(i, a),
    "Elu": lambda i, a, n: F.elu(i[0], a.get("alpha", 1.0)),
    "Selu": lambda i, a, n: a.get("gamma", 1.0507009873554805) * torch.where(
        i[0] > 0, i[0], a.get("alpha", 1.6732632423543772) * (torch.exp(i[0]) - 1)),
    "Softplus": lambda i, a, n: F.softplus(i[0]),
    "LpPool": lambda i, a, n: _lp_pool(i, a),
    "InstanceNormalization": lambda i, a, n: F.instance_norm(i[0], weight=i[1], bias=i[2], eps=a.get("epsilon", 1e-5)),
    "Expand": lambda i, a, n: i[0].expand(torch.broadcast_shapes(i[0].shape, tuple(_ints(i[1])))),
    "ConstantOfShape": lambda i, a, n: _constant_of_shape(i, a),
    "Range": lambda i, a, n: _range(i, a),
    "Identity": lambda i, a, n: i[0],
    "Dropout": lambda i, a, n: i[0],
}


def _lp_pool(i, a):
    x = i[0]
    rank = x.dim() - 2
    pads = a.get("pads", [0] * 2 * rank)
    x = F.pad(x, _torch_pads(pads, rank))
    power = float(a.get("p", 2))
    run = (F.lp_pool1d, F.lp_pool2d, F.lp_pool3d)[rank - 1]
    return run(x.abs(), power, a["kernel_shape"], a.get("strides", [1] * rank))


def _constant_of_shape(i, a):
    value = a.get("value")
    fill = torch.from_numpy(np.array(numpy_helper.to_array(value))) if value is not None else torch.zeros(1)
    return fill.reshape(()).expand(_ints(i[0])).clone()


def _range(i, a):
    start, limit, delta = (t.item() for t in i[:3])
    return torch.arange(start, limit, delta, dtype=i[0].dtype)


def _fold(run: Callable, tensors: list) -> torch.Tensor:
    out = tensors[0]
    for t in tensors[1:]:
        out = run(out, t)
    return out


def unsupported(model: onnx.ModelProto) -> list[str]:
    """The operator types of ``model`` that :class:`TorchGraph` cannot run (``Constant`` is folded)."""
    return sorted({n.op_type for n in model.graph.node if n.op_type != "Constant" and n.op_type not in OPS
                   or n.domain not in ("", "ai.onnx")})


class TorchGraph(torch.nn.Module):
    """``model``'s graph as a torch module: ``forward(feeds)`` returns its outputs in order, differentiable in
    the float32 weight and bias initializers of its Conv, ConvTranspose, Gemm and MatMul nodes (``weights``)."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        self.nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        self.outputs = [o.name for o in model.graph.output]
        trained = {name for n in model.graph.node if n.op_type in TRAINED for name in n.input[1:]}
        self.weights = torch.nn.ParameterDict()
        self._slot: dict[str, str] = {}   # initializer name -> its key in ``weights``
        self._fixed: dict[str, torch.Tensor] = {}
        for k, init in enumerate(model.graph.initializer):
            array = numpy_helper.to_array(init)
            if init.name in trained and array.dtype == np.float32:
                self._slot[init.name] = f"w{k}"
                self.weights[f"w{k}"] = torch.nn.Parameter(torch.from_numpy(array.copy()))
            else:
                self._fixed[init.name] = torch.from_numpy(np.array(array))
        for n in model.graph.node:
            if n.op_type == "Constant":
                value = numpy_helper.to_array(_attributes(n)["value"])
                self._fixed[n.output[0]] = torch.from_numpy(np.array(value))
        self._attributes = [_attributes(n) for n in self.nodes]

    def to(self, *args, **kwargs):  # the fixed tensors move with the parameters
        self._fixed = {k: v.to(*args, **kwargs) if v.is_floating_point() else v for k, v in self._fixed.items()}
        return super().to(*args, **kwargs)

    def forward(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        values: dict[str, torch.Tensor] = dict(feeds)

        def read(name: str):
            if not name:
                return None
            if name in self._slot:
                return self.weights[self._slot[name]]
            if name in self._fixed:
                return self._fixed[name]
            return values[name]

        for node, attrs in zip(self.nodes, self._attributes):
            out = OPS[node.op_type]([read(name) for name in node.input], attrs, node)
            outs = out if isinstance(out, list) else [out]
            values.update((name, t) for name, t in zip(node.output, outs) if name)
        return [values[name] for name in self.outputs]

    def trained_initializers(self) -> dict[str, np.ndarray]:
        """The current value of every trainable initializer, by name."""
        return {name: self.weights[key].detach().cpu().numpy() for name, key in self._slot.items()}
