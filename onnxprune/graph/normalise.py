"""Normalise a model for analysis: fold constant subgraphs, name nodes, and infer static shapes."""
from __future__ import annotations

import copy
import logging
from typing import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import numpy_helper, shape_inference

from onnxprune.errors import ModelError
from onnxprune.graph.io import model_inputs, tensor_bytes
from onnxprune.graph.input_shapes import concrete_input_shapes
from onnxprune.metrics import light_copy

_MIN_OPSET = 7


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version of a model."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelError("the model imports no default-domain ('ai.onnx') opset.")


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with shape subgraphs and weight Reshape/Transpose chains folded to initializers.

    Folding is done by onnx-graphsurgeon (which evaluates constant subgraphs with ONNX Runtime).
    Opset, IR version, metadata and the graph's input/output signatures are kept; every node gets a
    unique name so reports can refer to it.
    """
    opset = opset_of(model)
    if opset < _MIN_OPSET:
        raise ModelError(f"the model uses opset {opset}; onnxprune supports opset {_MIN_OPSET} and later.",
                         note="convert it with onnx.version_converter first")
    _refuse_huge_tensors(model)
    graph = gs.import_onnx(_with_inferred_shapes(model))
    logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    ort.set_default_logger_severity(3)  # graphsurgeon's folding sessions: errors only (not optimiser warnings)
    try:
        graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
    except Exception as exc:  # folding is an optimisation; an unfoldable graph is analysed as it is
        logging.getLogger(__name__).debug("constant folding skipped: %s", exc)
    folded = gs.export_onnx(graph, do_type_check=False)
    return _restore_model_fields(folded, model)


def _refuse_huge_tensors(model: onnx.ModelProto) -> None:
    """ModelError for an initializer over 2 GB: protobuf cannot copy one message that large."""
    for init in model.graph.initializer:
        size = tensor_bytes(init)
        if size >= 2**31:
            raise ModelError(f"initializer '{init.name}' holds {size / 2**30:.1f} GiB: onnxprune cannot process one "
                             "tensor over 2 GiB (protobuf's message limit; models over 2 GB in total are fine).",
                             note="split the layer into smaller ones, e.g. two Gemms joined by a Concat")


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred value_info, so folding resolves Shape reads of static dims (TorchScript chunk)."""
    try:
        return shape_inference.infer_shapes(model)
    except Exception:  # inference is a help for folding, not a requirement
        return model


def _restore_model_fields(folded: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """Put back what export drops or changes: IR version, opsets, producer, metadata, IR<4 initializer inputs, and
    the outputs' declared types (export writes inferred dims over symbolic ones, e.g. a named channel dim)."""
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    folded.producer_name = model.producer_name
    folded.producer_version = model.producer_version
    folded.domain = model.domain
    folded.model_version = model.model_version
    folded.doc_string = model.doc_string
    del folded.metadata_props[:]
    folded.metadata_props.extend(model.metadata_props)
    set_graph_inputs(folded, model_inputs(model))
    declared = {o.name: o for o in model.graph.output}
    for output in folded.graph.output:
        if output.name in declared:
            output.CopyFrom(declared[output.name])
    name_nodes(folded)
    return folded


def set_graph_inputs(model: onnx.ModelProto, real_inputs: list[onnx.ValueInfoProto]) -> None:
    """Make the graph's inputs ``real_inputs`` plus, for IR version < 4 (which requires it), every initializer."""
    real = [copy.deepcopy(i) for i in real_inputs]
    del model.graph.input[:]
    model.graph.input.extend(real)
    if model.ir_version < 4:
        for init in model.graph.initializer:
            model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique, stable name (its op type and first output) when it has none."""
    seen: set[str] = set()
    for node in model.graph.node:
        name = node.name or f"{node.op_type}:{node.output[0] if node.output else len(seen)}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        seen.add(name)


def static_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """Infer a concrete shape for every tensor, inputs at ``input_shapes`` (the calibration data's or ``--shape``;
    without them only a symbolic batch dim may be left, and it is taken as 1: ``concrete_input_shapes``).

    Shapes come from onnx shape inference on a light copy (large weights as typed inputs, so models
    over 2 GB work too); tensors it cannot resolve are measured by running the model in ONNX Runtime
    once on zeros (only when inference leaves gaps).
    """
    concrete = concrete_input_shapes(model, input_shapes)
    probe = light_copy(model, concrete)
    del probe.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on the model: {str(exc).splitlines()[0][:200]}") from None
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_measured_shapes(model, concrete, missing))
    return shapes


def _measured_shapes(model: onnx.ModelProto, inputs: Mapping[str, tuple[int, ...]], names: list[str]) -> dict[str, tuple[int, ...]]:
    from onnxprune.graph.probe import add_outputs, onnx_to_numpy_dtype
    from onnxprune.runtime import create_session

    sess = create_session(add_outputs(model, names))
    feed = {i.name: np.zeros(inputs[i.name], dtype=onnx_to_numpy_dtype(i.type.tensor_type.elem_type))
            for i in model_inputs(model)}
    values = sess.run(names, feed)
    return {n: tuple(v.shape) for n, v in zip(names, values)}


def initializer_arrays(model: onnx.ModelProto, max_size: int | None = None) -> dict[str, np.ndarray]:
    """Initializers (and Constant nodes' values) as numpy arrays, keyed by tensor name; with ``max_size``, only
    those of at most that many elements (the small constants, not the weights)."""
    def small(t: onnx.TensorProto) -> bool:
        return max_size is None or int(np.prod(t.dims)) <= max_size

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if small(i)}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and small(attr.t):
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out
