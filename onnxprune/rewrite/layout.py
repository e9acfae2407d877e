"""Rewrites that keep what a model computes and let onnxruntime's CPU provider keep its blocked layout.

onnxruntime's CPU convolutions run in a blocked channel layout (NCHWc). A residual stream stays in it, and each
block's residual Add and ReLU fuse into the convolution that writes the sum, only while every node on the stream
can run blocked. The option-A shortcut of the CIFAR ResNets (every other row and column by strided Slices, then
zero channels by Pad) cannot: from the first such shortcut on, the stream leaves the blocked layout, and every
later block reorders its input in and its output out and adds and rectifies apart from the convolution
(ResNet-56 at batch 64: 3.9 of 74 ms of kernel time, `benchmarks/results/op_times.md`).

:func:`shortcut_convs` writes such a shortcut as one 1×1 convolution with the Slices' strides and a 0/1 weight
that places input channel i at output channel i + (the zeros padded before it): the same values (each output is
one input times 1, or 0), computed blocked. It costs C_out·C_in multiply-adds per output position, which the
budgets of a target keep room for (:func:`added_cost`).
"""
from __future__ import annotations

import copy
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.propagate import attr
from onnxprune.graph.normalise import initializer_arrays, opset_of
from onnxprune.metrics import ModelCounts, count_model, light_copy
from onnxprune.residual import tensor_producers, tensor_readers

_CONV_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
_TO_THE_END = 2**31 - 1   # a Slice end at least this large runs to the end of an axis of unknown size


class _Shortcut(NamedTuple):
    """A channel-padding shortcut: its Pad, the chain of that Pad and the Slices before it, the chain's input, the
    Slices' strides (rows, columns), the zero channels before and after the input's, and its element type."""

    pad: onnx.NodeProto
    chain: list[onnx.NodeProto]
    source: str
    strides: tuple[int, int]
    before: int
    channels: int
    after: int
    elem_type: int


def shortcut_convs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
                   ) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with every zero Pad of the channel axis of a 4-D tensor, together with the Slices before it
    that keep every s-th row or column from the first (module docstring), written as one 1×1 Conv; a new model
    and the names of the Pads replaced ([] and ``model`` itself when there is none). ``input_shapes``: concrete
    input shapes for shape inference where the model's are symbolic (as :func:`onnxprune.metrics.count_model`)."""
    found = _shortcuts(model, input_shapes)
    if not found:
        return model, []
    out = copy.deepcopy(model)
    graph = out.graph
    gone: set[str] = set()      # the Slices of the chains, by output (each Pad's place takes its Conv)
    freed: set[str] = set()     # the amounts, starts, ends... the replaced nodes read
    made: dict[str, onnx.NodeProto] = {}
    taken = {i.name for i in graph.initializer} | {t for n in graph.node for t in [*n.input, *n.output]}
    for pad, chain, source, strides, before, channels, after, elem_type in found:
        weight = _fresh(f"{pad.name or pad.output[0]}/layout_weight", taken)
        values = np.zeros((before + channels + after, channels, 1, 1), helper.tensor_dtype_to_np_dtype(elem_type))
        values[before + np.arange(channels), np.arange(channels)] = 1
        graph.initializer.append(numpy_helper.from_array(values, weight))
        if out.ir_version < 4:   # which lists every initializer as a graph input
            graph.input.append(helper.make_tensor_value_info(weight, elem_type, list(values.shape)))
        made[pad.output[0]] = helper.make_node("Conv", [source, weight], [pad.output[0]],
                                          name=_fresh(f"{pad.name or pad.output[0]}/layout_conv", taken),
                                          kernel_shape=[1, 1], strides=list(strides))
        gone.update(n.output[0] for n in chain[1:])
        freed.update(t for n in chain for t in n.input[1:] if t)
    nodes = [made.get(n.output[0], n) if n.op_type == "Pad" else n for n in graph.node
             if not (n.output and n.output[0] in gone)]
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unread(out, freed)
    return out, [f.pad.name for f in found]


def added_cost(counts: ModelCounts, rewritten: onnx.ModelProto,
               input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Multiply-adds ('flops') and parameters ('params') that :func:`shortcut_convs` added to a model of
    ``counts`` (taken at ``input_shapes``) in ``rewritten``; pruning can only lower them."""
    after = count_model(rewritten, input_shapes)
    return {"flops": float(max(after.flops - counts.flops, 0)), "params": float(max(after.params - counts.params, 0))}


def _shortcuts(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None) -> list[_Shortcut]:
    """Every shortcut :func:`shortcut_convs` rewrites."""
    opset = opset_of(model)
    pads = [n for n in model.graph.node if n.op_type == "Pad" and n.domain in ("", "ai.onnx")]
    if not pads:
        return []
    consts = initializer_arrays(model, max_size=64)
    producers, readers = tensor_producers(model), tensor_readers(model)
    outputs = {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(light_copy(model, input_shapes))
    types = {vi.name: vi.type.tensor_type for vi in [*inferred.graph.value_info, *inferred.graph.input,
                                                      *inferred.graph.output]}

    def dims(tensor: str) -> list[int]:
        known = types.get(tensor)
        if known is None or not known.HasField("shape"):
            return []
        return [d.dim_value if d.HasField("dim_value") else 0 for d in known.shape.dim]

    found = []
    for pad in pads:
        amounts = _channel_pad(pad, opset, consts)
        if amounts is None:
            continue
        chain, strides, tensor = [pad], [1, 1], pad.input[0]
        while (node := producers.get(tensor)) is not None and node.op_type == "Slice" \
                and len(readers.get(tensor, [])) == 1 and tensor not in outputs \
                and (steps := _spatial_steps(node, opset, consts, dims(node.input[0]))) is not None:
            chain.append(node)
            strides = [strides[0] * steps[0], strides[1] * steps[1]]
            tensor = node.input[0]
        shape = dims(tensor)
        if len(shape) != 4 or shape[1] <= 0 or types[tensor].elem_type not in _CONV_TYPES:
            continue
        found.append(_Shortcut(pad, chain, tensor, (strides[0], strides[1]), amounts[0], shape[1], amounts[1],
                               types[tensor].elem_type))
    return found


def _channel_pad(pad: onnx.NodeProto, opset: int, consts: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(zeros before, zeros after) when ``pad`` adds constant zeros on axis 1 of a 4-D tensor and nothing on
    another axis; else None."""
    if attr(pad, "mode", "constant") != "constant":
        return None
    if opset < 11:
        amounts, value, axes = attr(pad, "pads", None), attr(pad, "value", 0.0), None
    else:
        inputs = [*pad.input, "", "", ""]
        amounts = consts.get(inputs[1]) if inputs[1] else None
        value = consts.get(inputs[2]) if inputs[2] else 0.0
        axes = consts.get(inputs[3]) if inputs[3] else None
        if inputs[3] and axes is None:
            return None
    if amounts is None or value is None or np.size(value) > 1 or float(np.asarray(value).reshape(-1)[0]
                                                                        if np.size(value) else 0.0) != 0.0:
        return None
    amounts = [int(v) for v in np.asarray(amounts).reshape(-1)]
    axes = list(range(4)) if axes is None else [int(a) % 4 for a in np.asarray(axes).reshape(-1)]
    if len(amounts) != 2 * len(axes):
        return None
    before, after = dict(zip(axes, amounts[:len(axes)])), dict(zip(axes, amounts[len(axes):]))
    channels = (before.get(1, 0), after.get(1, 0))
    others = [v for a, v in [*before.items(), *after.items()] if a != 1]
    if min(channels) < 0 or not any(channels) or any(others):
        return None
    return channels


def _spatial_steps(node: onnx.NodeProto, opset: int, consts: dict[str, np.ndarray],
                   shape: Sequence[int]) -> tuple[int, int] | None:
    """(step on axis 2, step on axis 3) of a Slice of a 4-D tensor (of ``shape``, 0 where unknown) that keeps
    every step-th row or column from the first to the end of the spatial axes only; else None."""
    if opset < 10:
        starts, ends, axes, steps = attr(node, "starts", None), attr(node, "ends", None), attr(node, "axes", None), None
    else:
        inputs = [*node.input, "", ""]
        starts, ends = consts.get(inputs[1]), consts.get(inputs[2])
        axes = consts.get(inputs[3]) if inputs[3] else None
        steps = consts.get(inputs[4]) if inputs[4] else None
        if (inputs[3] and axes is None) or (inputs[4] and steps is None):
            return None
    if starts is None or ends is None:
        return None
    starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    axes = np.arange(starts.size) if axes is None else np.asarray(axes).reshape(-1) % 4
    steps = np.ones(starts.size, dtype=np.int64) if steps is None else np.asarray(steps).reshape(-1)
    if not starts.size == ends.size == axes.size == steps.size:
        return None
    out = [1, 1]
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        size = shape[axis] if len(shape) == 4 and shape[axis] > 0 else _TO_THE_END
        if axis not in (2, 3) or start != 0 or end < size or step < 1:
            return None
        out[axis - 2] *= int(step)
    return out[0], out[1]


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or it with a number appended, that no tensor or node of the model has yet (then taken)."""
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def _drop_unread(model: onnx.ModelProto, freed: set[str]) -> None:
    """Remove the initializers and Constant nodes among ``freed`` that nothing reads any more (an initializer also
    listed as a graph input, as IR versions below 4 list every one, leaves the inputs too)."""
    graph = model.graph
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    unread = freed - read
    inits = {i.name for i in graph.initializer} & unread
    for field, keep in ((graph.node, lambda n: not (n.op_type == "Constant" and n.output[0] in unread)),
                        (graph.initializer, lambda i: i.name not in unread),
                        (graph.input, lambda v: v.name not in inits)):
        kept = [item for item in field if keep(item)]
        if len(kept) != len(field):
            del field[:]
            field.extend(kept)
