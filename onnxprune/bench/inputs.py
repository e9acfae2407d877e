"""Inputs for benchmarking: the graph's input specs, ``--shape`` overrides, batch sizes, random or given feeds."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from onnxprune.errors import DataError, UsageError
from onnxprune.graph.input_shapes import known_dim

__all__ = [
    "InputSpec",
    "NotApplicable",
    "input_specs",
    "parse_shape_overrides",
    "check_overrides",
    "fixed_batch",
    "resolve_shapes",
    "random_feeds",
    "feeds_for_batch",
]

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class InputSpec:
    """A real graph input (initializers excluded): name, dims (None: unknown rank) and numpy dtype name."""

    name: str
    shape: Optional[Tuple[Dim, ...]]
    dtype: str

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)

    def dim_text(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape) or "scalar"


class NotApplicable(Exception):
    """A batch size the model cannot run (its batch dim is fixed); the message is the note for the results."""


def _np_dtype(elem_type: int) -> str:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # noqa: BLE001
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    if dtype.kind == "V":  # bfloat16 / float8 come back as opaque types
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    return dtype.name


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers) with their dims and dtypes."""
    inits = {init.name for init in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        ttype = vi.type.tensor_type
        if vi.type.WhichOneof("value") != "tensor_type":
            raise UsageError(f"input '{vi.name}' is not a tensor; onnxprune bench only feeds tensors.")
        shape: Optional[tuple] = None
        if ttype.HasField("shape"):
            shape = tuple(known_dim(dim) or dim.dim_param or None for dim in ttype.shape.dim)
        specs.append(InputSpec(vi.name, shape, _np_dtype(ttype.elem_type)))
    return specs


_DIMS = re.compile(r"^\d+([x,]\d+)*$")


def parse_shape_overrides(texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` items (``,`` also separates dims; ``name:`` alone is a scalar).

    The name may itself contain ``:``; the last ``:`` separates it from the dims.
    """
    overrides: dict[str, tuple[int, ...]] = {}
    for text in texts:
        text = text.strip()
        name, sep, dims = text.rpartition(":")
        dims = dims.strip().lower()
        if not sep or not name:
            raise UsageError(
                f"cannot read --shape '{text}'.",
                note="write it as INPUT_NAME:DIMS, e.g. --shape input:1x3x224x224",
            )
        if dims and not _DIMS.match(dims):
            raise UsageError(
                f"cannot read the dims of --shape '{text}'.",
                note="dims are positive integers separated by 'x', e.g. input:1x3x224x224",
            )
        values = tuple(int(d) for d in re.split(r"[x,]", dims)) if dims else ()
        if any(v <= 0 for v in values):
            raise UsageError(f"--shape '{text}' has a dimension <= 0.", note="every dim must be a positive integer")
        if name in overrides and overrides[name] != values:
            raise UsageError(f"--shape gives input '{name}' twice with different dims.")
        overrides[name] = values
    return overrides


def check_overrides(specs: Sequence[InputSpec], overrides: Mapping[str, Sequence[int]], model_label: str = "the model") -> None:
    """Reject overrides for unknown inputs, of the wrong rank, or contradicting a fixed dim (batch dim excepted)."""
    by_name = {s.name: s for s in specs}
    for name, dims in overrides.items():
        spec = by_name.get(name)
        if spec is None:
            names = ", ".join(f"{s.name} ({s.dim_text()})" for s in specs) or "none"
            raise UsageError(
                f"--shape names input '{name}', which {model_label} does not have; its inputs: {names}.",
            )
        if spec.shape is None:
            continue
        if len(dims) != len(spec.shape):
            raise UsageError(
                f"--shape gives input '{name}' {len(dims)} dims, but it has rank {len(spec.shape)} ({spec.dim_text()}) in {model_label}.",
                note=f"give all {len(spec.shape)} dims, e.g. --shape {name}:{_example(spec)}",
            )
        for axis, (want, have) in enumerate(zip(dims, spec.shape)):
            if axis == 0 and isinstance(have, int) and len(spec.shape) > 0:
                continue  # a fixed batch dim mismatch is reported per batch size, not as an error
            if isinstance(have, int) and want != have:
                raise UsageError(
                    f"--shape gives dim {axis} of input '{name}' as {want}, but {model_label} fixes it at {have} ({spec.dim_text()}).",
                )


def _example(spec: InputSpec) -> str:
    if spec.shape is None:
        return "1x3x224x224"
    return "x".join(str(d) if isinstance(d, int) else ("1" if i == 0 else "224") for i, d in enumerate(spec.shape)) or ""


def fixed_batch(specs: Sequence[InputSpec]) -> Optional[int]:
    """The model's fixed batch size, or None when some input's first dim is dynamic (or there is none)."""
    first: Optional[int] = None
    for spec in specs:
        if not spec.shape:
            continue
        if not isinstance(spec.shape[0], int):
            return None
        if first is None:
            first = spec.shape[0]
    return first


def resolve_shapes(
    specs: Sequence[InputSpec],
    batch: int,
    overrides: Optional[Mapping[str, Sequence[int]]] = None,
    model_label: str = "the model",
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes at ``batch``.

    The batch replaces the first dim of every input whose first dim is dynamic (also in an override);
    other dynamic dims come from ``overrides``. Raises NotApplicable when the model's batch is fixed at
    another size, UsageError when a dynamic dim has no value.
    """
    overrides = dict(overrides or {})
    check_overrides(specs, overrides, model_label)
    fixed = fixed_batch(specs)
    if fixed is not None and fixed != batch:
        raise NotApplicable(f"fixed batch {fixed}")
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        given = overrides.get(spec.name)
        if spec.shape is None:
            if given is None:
                raise UsageError(
                    f"input '{spec.name}' of {model_label} has unknown rank.",
                    note=f"give its shape with --shape {spec.name}:1x3x224x224",
                )
            dims = list(given)
            if dims and fixed is None:
                dims[0] = batch
            shapes[spec.name] = tuple(dims)
            continue
        dims = []
        for axis, have in enumerate(spec.shape):
            if isinstance(have, int):
                dims.append(have)
            elif axis == 0:
                dims.append(batch)
            elif given is not None:
                dims.append(int(given[axis]))
            else:
                label = f" ('{have}')" if have else ""
                raise UsageError(
                    f"input '{spec.name}' of {model_label} has a dynamic dim {axis}{label} ({spec.dim_text()}).",
                    note=f"give its size with --shape {spec.name}:{_example(spec)}",
                )
        shapes[spec.name] = tuple(dims)
    return shapes


def random_feeds(shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs: floats standard normal, integers in [0, 10), booleans fair coin flips."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        try:
            dtype = np.dtype(dtypes[name])
        except TypeError:
            raise UsageError(
                f"input '{name}' has element type {dtypes[name]}, for which no random data can be made.",
                note="pass your own feeds (numpy arrays) to benchmark()",
            ) from None
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        elif dtype.kind in "iu":
            feeds[name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.random(shape) < 0.5
        elif dtype.kind in "OUS":
            feeds[name] = np.full(shape, "a", dtype=object)
        else:
            raise UsageError(f"input '{name}' has dtype {dtype}, for which no random data can be made.")
    return feeds


def feeds_for_batch(
    feeds: Mapping[str, np.ndarray],
    specs: Sequence[InputSpec],
    batch: int,
    model_label: str = "the model",
) -> dict[str, np.ndarray]:
    """Given feeds (e.g. calibration samples) cut or repeated along axis 0 to ``batch``, checked against the inputs.

    Raises DataError for missing/extra names, wrong rank or fixed dims, or a dtype of another kind;
    NotApplicable when the model's batch is fixed at another size.
    """
    names = {s.name for s in specs}
    missing = sorted(names - set(feeds))
    extra = sorted(set(feeds) - names)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no data for input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"data for unknown input(s) {', '.join(extra)}")
        raise DataError(f"feeds do not match the inputs of {model_label}: {'; '.join(parts)}.")
    fixed = fixed_batch(specs)
    if fixed is not None and fixed != batch:
        raise NotApplicable(f"fixed batch {fixed}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        array = np.asarray(feeds[spec.name])
        want = np.dtype(spec.dtype) if not spec.dtype.startswith(("bfloat", "float8", "float4")) else None
        if want is not None and array.dtype != want:
            if array.dtype.kind != want.kind and not (array.dtype.kind in "iu" and want.kind in "iu"):
                raise DataError(f"feed '{spec.name}' has dtype {array.dtype}; {model_label} expects {want}.")
            array = array.astype(want)
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise DataError(
                    f"feed '{spec.name}' has shape {array.shape}; {model_label} expects rank {len(spec.shape)} ({spec.dim_text()})."
                )
            for axis, have in enumerate(spec.shape):
                if axis > 0 and isinstance(have, int) and array.shape[axis] != have:
                    raise DataError(f"feed '{spec.name}' has shape {array.shape}; {model_label} expects {spec.dim_text()}.")
        if array.ndim >= 1 and (spec.shape is None or not isinstance(spec.shape[0], int)):
            if array.shape[0] == 0:
                raise DataError(f"feed '{spec.name}' is empty.")
            if array.shape[0] != batch:
                array = array[np.arange(batch) % array.shape[0]]
        out[spec.name] = np.ascontiguousarray(array)
    return out
