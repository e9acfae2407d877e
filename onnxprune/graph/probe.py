"""Expose intermediate tensors of a model as outputs so ONNX Runtime returns them."""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import onnx
from onnx import helper


def onnx_to_numpy_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX tensor element type."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def add_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the given tensors (existing outputs stay first)."""
    out = copy.deepcopy(model)
    have = {o.name for o in out.graph.output}
    types = element_types(out)
    for name in names:
        if name not in have:
            out.graph.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
            have.add(name)
    return out


def probe_model(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that outputs exactly ``names`` and keeps only the nodes they depend on.

    ONNX Runtime runs every node of a session whatever outputs are asked for, so a pass that needs
    tensors near the input should not pay for the rest of the network.
    """
    from onnxprune.graph.io import copy_fields, model_inputs

    names = list(dict.fromkeys(names))
    needed = set(names)
    keep = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(node_reads(node))
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")  # only the weights the kept nodes read are copied
    graph = out.graph
    copy_fields(model.graph, graph, skip=("node", "initializer", "input", "output", "value_info"))
    graph.node.extend(reversed(keep))
    graph.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    real = {i.name for i in model_inputs(model)}
    graph.input.extend(i for i in model.graph.input if i.name in real or i.name in needed)
    graph.value_info.extend(v for v in model.graph.value_info if v.name in needed)
    types = element_types(out)
    graph.output.extend(helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None) for n in names)
    return out


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, including outer-scope names used inside its subgraphs (If, Loop, Scan)."""
    reads = {i for i in node.input if i}
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in graph.node:
                reads |= node_reads(inner)
    return reads


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value shape inference can type (inputs, outputs, intermediates)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types
