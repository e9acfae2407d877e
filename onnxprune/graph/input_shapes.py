"""Concrete shapes for a model's inputs: from the calibration data or ``--shape``, never guessed.

Only a symbolic first (batch) dim defaults to 1: counts are per sample. Any other symbolic or unknown dim
(the height and width of a detector, the width of a text line) changes what every layer costs, so it must
come from the data or from ``--shape NAME:DIMS``; without it the caller gets one line asking for it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import onnx

from onnxprune.errors import UsageError
from onnxprune.graph.io import model_inputs

Shape = tuple[int, ...]


def known_dim(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    """A dim's size, or None when it is not known: symbolic, unset, or the -1 or 0 some exporters write."""
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def concrete_input_shapes(model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None = None) -> dict[str, Shape]:
    """Every real input's shape: ``given`` where given, else its static dims with a symbolic batch dim = 1.

    Raises UsageError naming the input and the ``--shape`` to give when another dim is not static.
    """
    given = dict(given or {})
    out: dict[str, Shape] = {}
    for inp in model_inputs(model):
        if inp.name in given:
            out[inp.name] = tuple(int(v) for v in given[inp.name])
            continue
        tensor = inp.type.tensor_type
        if not tensor.HasField("shape"):
            raise UsageError(f"input '{inp.name}' has unknown rank, so its shape cannot be set.",
                             note=f"give it with --shape {inp.name}:DIMS, e.g. {inp.name}:1x3x224x224")
        dims = [known_dim(d) for d in tensor.shape.dim]
        if any(d is None for d in dims[1:]):
            raise UsageError(f"input '{inp.name}' has symbolic dims ({dims_text(tensor.shape)}): the multiply-adds "
                             f"of every layer depend on them.",
                             note=f"give the size the model runs at with --shape {inp.name}:{_example(dims)}")
        out[inp.name] = tuple(1 if d is None else d for d in dims)
    return out


def dims_text(shape: onnx.TensorShapeProto) -> str:
    """``NxCxHxW`` style text of a tensor shape, symbolic dims by name (``?`` when unnamed)."""
    return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim)


def shapes_text(shapes: Mapping[str, Shape]) -> str:
    """``name 1x3x640x640, other 1x8`` for reports."""
    return ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in shapes.items())


def _example(dims: list[int | None]) -> str:
    spatial = 640 if len(dims) == 4 else 256
    return "x".join(str(d) if d is not None else ("1" if i == 0 else str(spatial)) for i, d in enumerate(dims))
