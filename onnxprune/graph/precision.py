"""Element types: refuse quantised models; analyse float16 models in float32 and write float16 back.

A float16 model is converted with :func:`to_float32` (initializers, value types, Cast ``to`` and
``dtype`` attributes, tensor attributes, subgraphs), so calibration statistics are accumulated from
float32 activations. :func:`restore_float16` gives the pruned model the reference's float16 types
again: same-named tensors and node attributes take the reference's type, and initializers the
rewrite created take the type of the input they replace (or of their node's output).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Union

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from onnxprune.errors import ModelError
from onnxprune.graph.io import model_inputs
from onnxprune.graph.normalise import set_graph_inputs
from onnxprune.graph.probe import element_types

_QUANTISED_PREFIXES = ("QLinear", "QGemm", "QAttention", "QOrdered", "MatMulNBits", "MatMulBnb4")
_DTYPE_ATTRIBUTES = ("to", "dtype")

Float16Site = Union[TensorProto, onnx.TypeProto.Tensor, AttributeProto]


def refuse_quantised(model: onnx.ModelProto) -> None:
    """Raise ModelError naming the first quantised node (QDQ, QLinear*, *Integer and the like)."""
    for graph in _graphs(model.graph):
        for node in graph.node:
            op = node.op_type
            if "Quantize" in op or "Integer" in op or op.startswith(_QUANTISED_PREFIXES):
                raise ModelError(
                    f"the model is quantised: node '{node.name or node.output[0]}' is a {op}; onnxprune prunes "
                    "float32 and float16 models only.",
                    note="prune the float model, then quantise the pruned one")


def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every float16 tensor, type and dtype attribute made float32; ``model`` itself when it has none."""
    if next(_float16_sites(model.graph), None) is None:
        return model
    out = copy.deepcopy(model)
    for site in list(_float16_sites(out.graph)):
        if isinstance(site, TensorProto):
            site.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(site).astype(np.float32), site.name))
        elif isinstance(site, AttributeProto):
            site.i = TensorProto.FLOAT
        else:
            site.elem_type = TensorProto.FLOAT
    return out


def restore_float16(pruned: onnx.ModelProto, reference: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``pruned``, rewritten from ``to_float32(reference)``, the float16 types of ``reference`` (in place)."""
    if next(_float16_sites(reference.graph), None) is None:
        return pruned
    types = element_types(reference) | {t.name: t.data_type for t in reference.graph.initializer}
    ref_nodes = {n.name: n for n in reference.graph.node}
    wanted = _initializer_types(pruned, types, ref_nodes)
    for init in pruned.graph.initializer:
        if init.data_type == TensorProto.FLOAT and wanted.get(init.name) == TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in pruned.graph.node:
        if node.name in ref_nodes:
            _restore_attributes(node, ref_nodes[node.name])
    for vi in (*model_inputs(pruned), *pruned.graph.output):
        vi.type.tensor_type.elem_type = types.get(vi.name, vi.type.tensor_type.elem_type)
    set_graph_inputs(pruned, model_inputs(pruned))  # re-lists IR<4 initializer inputs with their new types
    del pruned.graph.value_info[:]
    try:
        pruned.graph.value_info.extend(onnx.shape_inference.infer_shapes(pruned).graph.value_info)
    except Exception:  # value_info is optional metadata; the checker verifies the graph itself
        pass
    return pruned


def _initializer_types(pruned: onnx.ModelProto, types: dict[str, int],
                       ref_nodes: dict[str, onnx.NodeProto]) -> dict[str, int]:
    """The element type each initializer of ``pruned`` should have, from the reference where it can tell."""
    wanted = {}
    for node in pruned.graph.node:
        ref = ref_nodes.get(node.name)
        for i, name in enumerate(node.input):
            if not name or name in wanted:
                continue
            if name in types:
                wanted[name] = types[name]
            elif ref is not None and i < len(ref.input) and ref.input[i] in types:
                wanted[name] = types[ref.input[i]]  # a re-fitted or sliced copy of the reference's input
            elif node.output and node.output[0] in types:
                wanted[name] = types[node.output[0]]  # a new bias: the type of what its node writes
    return wanted


def _restore_attributes(node: onnx.NodeProto, ref: onnx.NodeProto) -> None:
    for ref_attr in ref.attribute:
        if _holds_float16(ref_attr):
            for attr in node.attribute:
                if attr.name == ref_attr.name:
                    attr.CopyFrom(ref_attr)


def _holds_float16(attr: AttributeProto) -> bool:
    """Whether the attribute is, or its subgraphs hold, a float16 site."""
    graph = onnx.GraphProto(node=[onnx.NodeProto(attribute=[attr])])
    return next(_float16_sites(graph), None) is not None


def _float16_sites(graph: onnx.GraphProto) -> Iterator[Float16Site]:
    """Every float16 initializer, value type and attribute of ``graph`` and its subgraphs."""
    for sub in _graphs(graph):
        yield from (t for t in sub.initializer if t.data_type == TensorProto.FLOAT16)
        for vi in (*sub.input, *sub.output, *sub.value_info):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
                yield vi.type.tensor_type
        for node in sub.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.INT and attr.name in _DTYPE_ATTRIBUTES and attr.i == TensorProto.FLOAT16:
                    yield attr
                elif attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                    yield attr.t
                elif attr.type == AttributeProto.TENSORS:
                    yield from (t for t in attr.tensors if t.data_type == TensorProto.FLOAT16)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and, depth first, every subgraph of its nodes."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)
