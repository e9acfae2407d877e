"""Read and write ONNX models safely: clear errors, external data, atomic writes."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message

from onnxprune.atomic import atomic_path, check_destination
from onnxprune.errors import ModelError, UsageError, first_line

_TWO_GB = 2**31 - 2**20  # protobuf's limit, with a margin
_EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors stay inside the .onnx file


def load_model(path: str | os.PathLike, *, check: bool = True, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (with its external data unless told not to); ModelError with one line on any problem."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist.")
    if path.is_dir():
        raise ModelError(f"model path '{path}' is a folder, not an .onnx file.")
    try:
        model = onnx.load(str(path), load_external_data=False)
        if external_data:
            load_external_data(model, path)
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise ModelError(
            f"cannot read '{path}' as an ONNX model ({type(exc).__name__}: {first_line(exc)}).",
            note="the file may be truncated, not ONNX, or missing its external data files",
        ) from None
    if not model.graph.node:
        raise ModelError(f"'{path}' holds no graph nodes; it is empty or not an ONNX model.")
    if check:
        check_model(model, path)
    return model


def external_data_files(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the model's initializers name, as paths in ``folder`` (each once)."""
    files: dict[Path, None] = {}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    files[folder / entry.value] = None
    return list(files)


def require_external_data(model: onnx.ModelProto, path: Path) -> None:
    """ModelError naming the first external data file of the model at ``path`` that is missing."""
    for extra in external_data_files(model, path.parent):
        if not extra.is_file():
            raise ModelError(f"external data file '{extra}' of '{path}' is missing.",
                             note="keep the .onnx file and its external data files together in one folder")


def load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read into ``model`` (loaded from ``path`` without it) its external data; ModelError naming a missing file."""
    require_external_data(model, path)
    onnx.load_external_data_for_model(model, str(path.parent))


def check_model(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> None:
    """Run onnx.checker (full check with shape inference) and raise ModelError on failure."""
    try:
        if not is_large(model):
            onnx.checker.check_model(model, full_check=True)
        elif path is not None:
            onnx.checker.check_model(str(path), full_check=True)
        else:
            with temporary_file(model) as tmp:
                onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:  # the checker raises several exception types
        where = f"'{path}'" if path else "the model"
        raise ModelError(f"{where} fails onnx.checker: {first_line(exc)}") from None


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are real inputs (not initializers, as IR < 4 lists them)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike, *, force: bool,
                      option: str = "-o") -> Path:
    """Validate where an output model may be written (not the input, in a folder that takes a new file, not an
    existing file unless ``force``); raise UsageError otherwise, naming ``option``."""
    out = Path(output)
    if out.resolve() == Path(input_path).resolve():
        raise UsageError(f"output '{out}' is the input model; onnxprune never overwrites its input.",
                         note=f"choose another path with {option}")
    check_destination(out, option, "model.pruned.onnx")
    if out.exists() and not force:
        raise UsageError(f"output '{out}' already exists.", note="pass --force to overwrite it")
    return out


def save_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write a model atomically; models over 2 GB (or when asked) get their weights in 'OUT.data' beside it."""
    out = Path(output)
    if external_data is None:
        external_data = is_large(model)
    with atomic_path(out) as tmp:
        if external_data:
            data_name = out.name + ".data"
            with atomic_path(out.parent / data_name) as tmp_data:
                onnx.save_model(_with_external_data(model, tmp_data, data_name), str(tmp))
        else:
            onnx.save_model(model, str(tmp))


@contextlib.contextmanager
def temporary_file(model: onnx.ModelProto) -> Iterator[Path]:
    """The model written to a temporary folder (weights as external data when it is large), for tools that
    need a file; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-") as folder:
        path = Path(folder) / "model.onnx"
        save_model(model, path)
        yield path


def is_large(model: onnx.ModelProto) -> bool:
    """Whether a model is over protobuf's 2 GB limit: it cannot be serialised whole (nor, with upb, even sized)."""
    try:
        return model.ByteSize() > _TWO_GB
    except Exception:  # protobuf refuses to size messages over 2 GB on some builds
        return True


def serialised(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None when it is over protobuf's 2 GB limit (one encoding, where
    :func:`is_large` followed by ``SerializeToString`` would encode it twice)."""
    try:
        payload = model.SerializeToString()
    except Exception:  # protobuf refuses to encode messages over 2 GB
        return None
    return payload if len(payload) <= _TWO_GB else None


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The size of a tensor's values in bytes, from its dims and type (without reading the data)."""
    return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _with_external_data(model: onnx.ModelProto, data_path: Path, location: str) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers of 1 KiB or more (with raw data) are written to ``data_path`` and
    referenced as ``location``; their bytes go to the file, never into a second in-memory model."""
    light = onnx.ModelProto()
    copy_fields(model, light, skip="graph")
    copy_fields(model.graph, light.graph, skip="initializer")
    with open(data_path, "wb") as data:
        for init in model.graph.initializer:
            if not init.HasField("raw_data") or tensor_bytes(init) < _EXTERNAL_THRESHOLD:
                light.graph.initializer.append(init)
                continue
            tensor = light.graph.initializer.add()
            copy_fields(init, tensor, skip="raw_data")
            offset = data.tell()
            data.write(init.raw_data)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", offset), ("length", data.tell() - offset)):
                tensor.external_data.add(key=key, value=str(value))
    return light


def copy_fields(source: Message, target: Message, skip: str | Iterable[str]) -> None:
    """Copy every field set in ``source`` except the ``skip`` field(s) (never copied) into ``target``."""
    skip = {skip} if isinstance(skip, str) else set(skip)
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if isinstance(value, Message):
            getattr(target, field.name).CopyFrom(value)
        elif isinstance(value, (str, bytes, int, float)):
            setattr(target, field.name, value)
        else:
            getattr(target, field.name).extend(value)

