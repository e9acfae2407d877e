"""Read and write ONNX models safely: clear errors, external data, atomic writes."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError

from onnxprune.atomic import atomic_path
from onnxprune.errors import ModelError, UsageError

_TWO_GB = 2**31 - 2**20  # protobuf's limit, with a margin


def load_model(path: str | os.PathLike, *, check: bool = True, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (with its external data unless told not to); ModelError with one line on any problem."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist.")
    if path.is_dir():
        raise ModelError(f"model path '{path}' is a folder, not an .onnx file.")
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise ModelError(
            f"cannot read '{path}' as an ONNX model ({type(exc).__name__}: {_first_line(exc)}).",
            note="the file may be truncated, not ONNX, or missing its external data files",
        ) from None
    if not model.graph.node:
        raise ModelError(f"'{path}' holds no graph nodes; it is empty or not an ONNX model.")
    if check:
        check_model(model, path)
    return model


def check_model(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> None:
    """Run onnx.checker (full check with shape inference) and raise ModelError on failure."""
    try:
        if model.ByteSize() > _TWO_GB and path is not None:
            onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the checker raises several exception types
        where = f"'{path}'" if path else "the model"
        raise ModelError(f"{where} fails onnx.checker: {_first_line(exc)}") from None


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are real inputs (not initializers, as IR < 4 lists them)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike, *, force: bool) -> Path:
    """Validate where an output model may be written; raise UsageError otherwise."""
    out = Path(output)
    if out.resolve() == Path(input_path).resolve():
        raise UsageError(f"output '{out}' is the input model; onnxprune never overwrites its input.",
                         note="choose another path with -o")
    if not out.parent.resolve().is_dir():
        raise UsageError(f"output folder '{out.parent}' does not exist.")
    if out.exists() and not force:
        raise UsageError(f"output '{out}' already exists.", note="pass --force to overwrite it")
    return out


def save_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write a model atomically; models over 2 GB (or when asked) get their weights in 'OUT.data' beside it."""
    out = Path(output)
    model = copy.deepcopy(model)  # saving with external data rewrites the tensors in place
    if external_data is None:
        external_data = model.ByteSize() > _TWO_GB if _small_enough_to_size(model) else True
    with atomic_path(out) as tmp:
        if external_data:
            data_name = out.name + ".data"
            with atomic_path(out.parent / data_name) as tmp_data:
                onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=tmp_data.name, size_threshold=1024)
                # the proto names the temporary data file: re-point it at the final name
                _rename_external_location(tmp, tmp_data.name, data_name)
        else:
            onnx.save_model(model, str(tmp))


def _small_enough_to_size(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf refuses to size messages over 2 GB on some builds
        return False


def _rename_external_location(model_path: Path, old: str, new: str) -> None:
    proto = onnx.load(str(model_path), load_external_data=False)
    for tensor in _all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save_model(proto, str(model_path))


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
