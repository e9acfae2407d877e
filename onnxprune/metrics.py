"""Parameter and multiply-add counts of an ONNX model.

``count_model`` is the single source of the figures that ``compress`` targets and ``bench`` reports.

* ``params``: elements of the floating-point initializers of the graph (and of its subgraphs) plus
  the elements of floating-point ``Constant`` node tensors. Integer tensors (shapes, indices) are
  not parameters.
* ``flops``: multiply-adds (MACs) of Conv, ConvTranspose, Gemm and MatMul nodes of the main graph
  at batch 1:

  - Conv: output spatial positions x C_out x (C_in / group) x prod(kernel)
  - ConvTranspose: input spatial positions x C_in x (C_out / group) x prod(kernel)
  - Gemm: M x K x N (``transA``/``transB`` respected)
  - MatMul: product of the broadcast batch dims x M x K x N (numpy semantics for 1-D operands)

  Conv and ConvTranspose are counted per sample (the batch dim is left out). Shapes come from ONNX
  shape inference on a light copy of the model whose inputs have the given ``input_shapes`` (the
  calibration data's, or ``--shape``); without them a symbolic batch dim is 1 and any other symbolic
  dim is an error (:func:`onnxprune.graph.input_shapes.concrete_input_shapes`): a detector's cost
  depends on its resolution, which is never guessed.
  Large float initializers are replaced by typed inputs in that copy, so models with weights of
  any size (external data loaded or not) work and the caller's model is never modified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.graph.input_shapes import concrete_input_shapes, known_dim

__all__ = ["ModelCounts", "count_model", "count_params", "COUNTED_OPS"]

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

_FLOAT_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in (
        "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16",
        "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "FLOAT4E2M1",
    )
    if hasattr(TensorProto, name)
)

# Float initializers with more elements than this are turned into typed graph inputs in the copy used
# for shape inference: weights are never needed to infer shapes, small float tensors (Resize scales) are.
_KEEP_FOR_INFERENCE = 64

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class ModelCounts:
    params: int  # number of float parameters: elements of float initializers (and float Constant node tensors) of the graph
    flops: int  # multiply-adds at batch 1 of Conv, ConvTranspose, Gemm, MatMul nodes
    per_node: Dict[str, Tuple[int, int]]  # node name -> (params attributed, MACs) for those op types
    conv_outputs: Dict[str, int] = field(default_factory=dict)  # Conv node name -> its output channels


def count_model(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelCounts:
    """Count float parameters and multiply-adds of ``model`` at ``input_shapes`` (batch 1; default: the static
    input dims); the model is not modified.

    Raises UsageError when an input has symbolic dims besides the batch and no shape is given, ValueError naming
    the node when a counted node's shapes stay unknown after shape inference.
    """
    graph = model.graph
    float_sizes = _float_tensor_sizes(graph)
    shapes = _shapes_for_counting(model, input_shapes)

    per_node: dict[str, tuple[int, int]] = {}
    conv_outputs: dict[str, int] = {}
    total_macs = 0
    for index, node in enumerate(graph.node):
        if node.op_type not in COUNTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = _unique_name(node, index, per_node)
        macs = _node_macs(node, name, shapes)
        if node.op_type == "Conv":
            conv_outputs[name] = _shape_of(node, name, node.input[1], shapes, min_rank=3)[0]
        attributed = sum(float_sizes.get(i, 0) for i in dict.fromkeys(node.input) if i)
        per_node[name] = (attributed, macs)
        total_macs += macs
    return ModelCounts(params=count_params(model), flops=total_macs, per_node=per_node, conv_outputs=conv_outputs)


def block_flops(counts: ModelCounts, block: int) -> int:
    """Multiply-adds with every Conv's output channels counted in whole blocks of ``block``: what onnxruntime's CPU
    convolutions compute in their NCHWc layout, where an output count costs its next multiple of the block (one
    below the block the whole block) and an input count about what it is (``benchmarks/results/count_cost.md``)."""
    total = 0
    for name, (_, macs) in counts.per_node.items():
        outputs = counts.conv_outputs.get(name)
        total += macs if not outputs else macs * (-(-outputs // block) * block) // outputs
    return total


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the float initializers and float Constant tensors of the graph and its subgraphs."""
    return sum(_float_tensor_sizes(model.graph, recurse=True, keyed=False))


# ----------------------------------------------------------------------------------------------------
# parameters


def _numel(dims: Iterable[int]) -> int:
    return int(math.prod(int(d) for d in dims))


def _constant_tensor(node: onnx.NodeProto) -> Optional[tuple[int, int, Shape]]:
    """(data type, elements, shape) of a Constant node's value, or None if it has no tensor value."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t.data_type, _numel(attr.t.dims), tuple(attr.t.dims)
        if attr.name == "sparse_value" and attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            return attr.sparse_tensor.values.data_type, _numel(attr.sparse_tensor.values.dims), tuple(attr.sparse_tensor.dims)
        if attr.name == "value_float":
            return TensorProto.FLOAT, 1, ()
        if attr.name == "value_floats":
            return TensorProto.FLOAT, len(attr.floats), (len(attr.floats),)
        if attr.name in ("value_int", "value_string"):
            return TensorProto.INT64, 1, ()
        if attr.name in ("value_ints", "value_strings"):
            n = len(attr.ints) if attr.name == "value_ints" else len(attr.strings)
            return TensorProto.INT64, n, (n,)
    return None


def _float_tensor_sizes(graph: onnx.GraphProto, *, recurse: bool = False, keyed: bool = True):
    """Float initializers / Constant outputs of ``graph``: {name: elements}, or a list of sizes when not keyed."""
    sizes: dict[str, int] = {}
    flat: list[int] = []
    for init in graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            sizes[init.name] = _numel(init.dims)
            flat.append(sizes[init.name])
    for sparse in graph.sparse_initializer:
        if sparse.values.data_type in _FLOAT_TYPES:
            sizes[sparse.values.name] = _numel(sparse.values.dims)
            flat.append(sizes[sparse.values.name])
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            const = _constant_tensor(node)
            if const is not None and const[0] in _FLOAT_TYPES:
                sizes[node.output[0]] = const[1]
                flat.append(const[1])
        if recurse:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    flat.extend(_float_tensor_sizes(attr.g, recurse=True, keyed=False))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        flat.extend(_float_tensor_sizes(sub, recurse=True, keyed=False))
    return sizes if keyed else flat


# ----------------------------------------------------------------------------------------------------
# shapes


def _static_dims(type_proto: onnx.TypeProto) -> Optional[Shape]:
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in type_proto.tensor_type.shape.dim:
        size = known_dim(dim)
        if size is None:
            return None
        dims.append(size)
    return tuple(dims)


def _constant_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {init.name: tuple(int(d) for d in init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            const = _constant_tensor(node)
            if const is not None:
                shapes[node.output[0]] = const[2]
    return shapes


def _forget_symbolic_dims(value_info: onnx.ValueInfoProto) -> None:
    """Turn symbolic dims, and the -1 or 0 some exporters write for unknown ones, into unknown dims, so that
    inferred values (at the concrete input shapes) merge without conflict."""
    if value_info.type.WhichOneof("value") != "tensor_type":
        return
    for dim in value_info.type.tensor_type.shape.dim:
        if known_dim(dim) is None and dim.WhichOneof("value"):
            dim.ClearField(dim.WhichOneof("value"))


def _set_dims(value_info: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    """Give a graph input the concrete ``dims``."""
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for value in dims:
        shape.dim.add().dim_value = int(value)


def light_copy(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """A copy for shape inference: inputs at their concrete shapes (:func:`concrete_input_shapes` of
    ``input_shapes``), large float weights replaced by typed inputs."""
    concrete = concrete_input_shapes(model, input_shapes)
    graph = model.graph
    input_names = {vi.name for vi in graph.input}

    light = onnx.GraphProto(name=graph.name)
    light.node.extend(graph.node)
    for vi in graph.input:
        copied = light.input.add()
        copied.CopyFrom(vi)
        if vi.name in concrete:
            _set_dims(copied, concrete[vi.name])
    for init in graph.initializer:
        if init.data_type in _FLOAT_TYPES and _numel(init.dims) > _KEEP_FOR_INFERENCE:
            if init.name not in input_names:
                light.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            light.initializer.append(init)
    light.sparse_initializer.extend(graph.sparse_initializer)
    for src, dst in ((graph.output, light.output), (graph.value_info, light.value_info)):
        for vi in src:
            copied = dst.add()
            copied.CopyFrom(vi)
            _forget_symbolic_dims(copied)

    out = onnx.ModelProto(ir_version=model.ir_version, graph=light)
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    return out


def _infer_static_shapes(light: onnx.ModelProto) -> dict[str, Shape]:
    inferred = light
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001 - inference is best effort; missing shapes are reported per node
            continue
    shapes: dict[str, Shape] = {}
    graph = inferred.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        dims = _static_dims(vi.type)
        if dims is not None:
            shapes[vi.name] = dims
    return shapes


def _needed_tensors(graph: onnx.GraphProto) -> set[str]:
    needed: set[str] = set()
    for node in graph.node:
        if node.op_type in ("Conv",) and len(node.input) > 1:
            needed.update((node.input[1], node.output[0]))
        elif node.op_type in ("ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            needed.update(node.input[:2])
    needed.discard("")
    return needed


def _shapes_for_counting(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, Shape]:
    """Static shapes of the tensors of the main graph, inputs at ``input_shapes`` (:func:`light_copy`).

    Plain ONNX shape inference first; where it leaves a counted node's shapes unknown (shape arithmetic
    through ops that ONNX data propagation does not cover, like the Slice+Pad shortcuts of torch exports),
    constant sub-graphs and Shape/Size of statically shaped tensors are folded with onnx.reference and
    inference is repeated.
    """
    light = light_copy(model, input_shapes)
    constants = _constant_shapes(model.graph)
    needed = _needed_tensors(model.graph)
    shapes: dict[str, Shape] = {}
    for _ in range(_FOLD_ROUNDS):  # each round may resolve one more link of a chain (C2f's chunk Slices)
        shapes = _infer_static_shapes(light)
        for name, dims in constants.items():
            shapes.setdefault(name, dims)
        if needed <= shapes.keys():
            break
        folded = _fold_constants(light, shapes)
        if folded is None:
            break
        light = folded
    return shapes


_NO_FOLD = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty", "Optional",
})
_FOLD_ROUNDS = 64  # fold-and-infer rounds at most; a round that folds nothing ends the loop
_FOLD_LIMIT = 1 << 16  # elements: shape arithmetic is small; never materialise big tensors


def _fold_constants(light: onnx.ModelProto, shapes: dict[str, Shape]) -> Optional[onnx.ModelProto]:
    """A copy of ``light`` with constant-computable nodes replaced by initializers, or None if nothing folds."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    opset = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), 21)
    graph = light.graph
    values: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if _numel(init.dims) <= _FOLD_LIMIT and init.data_location != TensorProto.EXTERNAL:
            try:
                values[init.name] = numpy_helper.to_array(init)
            except Exception:  # noqa: BLE001 - unusual types stay unknown
                pass

    folded: list[str] = []
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        outputs = None
        if node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD:
            pass
        elif node.op_type in ("Shape", "Size") and node.input and shapes.get(node.input[0]) is not None:
            dims = shapes[node.input[0]]
            if node.op_type == "Size":
                outputs = [np.array(_numel(dims), dtype=np.int64)]
            else:
                start, end = _attr_int(node, "start", 0), None
                if any(a.name == "end" for a in node.attribute):
                    end = _attr_int(node, "end", len(dims))
                outputs = [np.array(dims[start:end], dtype=np.int64)]
        elif all(i in values for i in node.input if i):
            try:
                evaluator = ReferenceEvaluator(node, opsets={"": opset})
                feeds = {i: values[i] for i in node.input if i}
                outputs = [np.asarray(o) for o in evaluator.run(None, feeds)]
            except Exception:  # noqa: BLE001 - not foldable here; inference may still manage
                outputs = None
            if outputs is not None and sum(o.size for o in outputs) > _FOLD_LIMIT:
                outputs = None
        if outputs is None or len(outputs) != len([o for o in node.output if o]):
            kept.append(node)
            continue
        for name, value in zip([o for o in node.output if o], outputs):
            values[name] = value
            folded.append(name)
    if not folded:
        return None

    out = onnx.ModelProto()
    out.CopyFrom(light)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    present = {init.name for init in out.graph.initializer}
    for name in folded:
        if name not in present:
            out.graph.initializer.append(numpy_helper.from_array(values[name], name))
    return out


# ----------------------------------------------------------------------------------------------------
# multiply-adds


def _unique_name(node: onnx.NodeProto, index: int, taken: dict) -> str:
    base = node.name or (node.output[0] if node.output and node.output[0] else f"{node.op_type}_{index}")
    name, k = base, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    return name


def _attr_int(node: onnx.NodeProto, key: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == key:
            return int(attr.i)
    return default


def _shape_of(node: onnx.NodeProto, name: str, tensor: str, shapes: dict[str, Shape], min_rank: int = 1) -> Shape:
    shape = shapes.get(tensor) if tensor else None
    if shape is None or len(shape) < min_rank:
        raise ValueError(
            f"cannot count multiply-adds of {node.op_type} node '{name}': the shape of '{tensor}' is unknown "
            "after ONNX shape inference at the input shapes counted."
        )
    return shape


def _node_macs(node: onnx.NodeProto, name: str, shapes: dict[str, Shape]) -> int:
    op = node.op_type
    if op == "Conv":
        w = _shape_of(node, name, node.input[1], shapes, min_rank=3)
        y = _shape_of(node, name, node.output[0], shapes, min_rank=3)
        return _numel(y[2:]) * w[0] * w[1] * _numel(w[2:])
    if op == "ConvTranspose":
        x = _shape_of(node, name, node.input[0], shapes, min_rank=3)
        w = _shape_of(node, name, node.input[1], shapes, min_rank=3)
        return _numel(x[2:]) * w[0] * w[1] * _numel(w[2:])
    if op == "Gemm":
        a = _shape_of(node, name, node.input[0], shapes, min_rank=2)
        b = _shape_of(node, name, node.input[1], shapes, min_rank=2)
        m, k = (a[1], a[0]) if _attr_int(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr_int(node, "transB", 0) else b[1]
        return m * k * n
    if op == "MatMul":
        a = _shape_of(node, name, node.input[0], shapes)
        b = _shape_of(node, name, node.input[1], shapes)
        if len(a) == 1:
            a = (1,) + a
        if len(b) == 1:
            b = b + (1,)
        try:
            batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        except ValueError:
            raise ValueError(f"MatMul node '{name}': batch dims {a[:-2]} and {b[:-2]} do not broadcast.") from None
        return _numel(batch) * a[-2] * a[-1] * b[-1]
    raise AssertionError(op)
