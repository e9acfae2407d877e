"""Check a pruned model: valid everywhere ONNX is, same signature, and close to the original on held-out data."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import onnx

from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.io import check_model, model_inputs
from onnxprune.runtime import create_session, fixed_batch


@dataclass(frozen=True)
class Fidelity:
    """Agreement of the pruned model with the original on held-out samples (first output)."""

    samples: int
    top1_agreement: float | None      # share of samples whose argmax over axis 1 is unchanged
    relative_error: float             # ‖y_pruned − y‖ / ‖y‖ over all held-out samples
    accuracy_before: float | None     # top-1 against labels, when the data has labels
    accuracy_after: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _signature(model: onnx.ModelProto) -> list[tuple]:
    def dims(vi):
        return tuple(d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim)
    return ([("in", i.name, i.type.tensor_type.elem_type, dims(i)) for i in model_inputs(model)]
            + [("out", o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output])


def check_pruned(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """Full onnx.checker pass, and the same inputs/outputs (names, dtypes, dims) and opset as the original."""
    check_model(pruned)
    if _signature(original) != _signature(pruned):
        raise OnnxPruneError("internal error: the pruned model's inputs/outputs differ from the original's; nothing was written.")
    if list(original.opset_import) != list(pruned.opset_import):
        raise OnnxPruneError("internal error: the pruned model's opset differs from the original's; nothing was written.")


def measure_fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, data: CalibrationData, indices: Sequence[int],
                     *, batch_size: int = 64, provider: str = "cpu") -> Fidelity | None:
    """Compare both models on ``indices`` of ``data``; None when there are no held-out samples."""
    if len(indices) == 0:
        return None
    a, b = create_session(original, provider), create_session(pruned, provider)
    name = original.graph.output[0].name
    batch = fixed_batch(original) or batch_size
    agree = correct_a = correct_b = n = 0
    num = den = 0.0
    classify = True
    for idx, feed in data.batches(list(indices), batch):
        ya = a.run([name], feed)[0].astype(np.float64)
        yb = b.run([name], feed)[0].astype(np.float64)
        num += float(np.sum((ya - yb) ** 2))
        den += float(np.sum(ya ** 2))
        n += len(idx)
        if ya.ndim < 2 or ya.shape[1] < 2:
            classify = False
            continue
        pa, pb = ya.argmax(axis=1), yb.argmax(axis=1)
        agree += float(np.mean(pa == pb)) * len(idx)
        if data.labels is not None and ya.ndim == 2:
            labels = data.labels[np.asarray(idx)]
            correct_a += int(np.sum(pa == labels))
            correct_b += int(np.sum(pb == labels))
    with_labels = classify and data.labels is not None and len(original.graph.output[0].type.tensor_type.shape.dim) == 2
    return Fidelity(
        samples=n,
        top1_agreement=agree / n if classify else None,
        relative_error=float(np.sqrt(num / den)) if den > 0 else 0.0,
        accuracy_before=correct_a / n if with_labels else None,
        accuracy_after=correct_b / n if with_labels else None,
    )
