"""Check a pruned model: valid everywhere ONNX is, same signature, and close to the original on held-out data."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import onnx

from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import OnnxPruneError
from onnxprune.fidelity_kinds import Judge, choose_judge, class_scores
from onnxprune.graph.io import check_model, model_inputs
from onnxprune.runtime import create_session, fixed_batch


@dataclass(frozen=True)
class Fidelity:
    """Agreement of the pruned model with the original on held-out samples, judged on one output (the first) as
    its ``kind`` says (``onnxprune.fidelity_kinds``); every output also gets its relative error."""

    samples: int
    top1_agreement: float | None      # classes: share of samples whose argmax over axis 1 is unchanged
    relative_error: float             # ‖y_pruned − y‖ / ‖y‖ of the judged output over all held-out samples
    accuracy_before: float | None     # classes: top-1 against labels, when the data has labels
    accuracy_after: float | None
    kind: str = "classes"             # classes, sequence, dense, yolo, or other (relative error only)
    output: str | None = None         # the judged output
    metrics: dict = field(default_factory=dict)         # the kind's figures (see fidelity_kinds)
    headline_name: str | None = None  # the kind's headline metric: what --target-fidelity holds
    headline_value: float | None = None
    output_errors: dict = field(default_factory=dict)   # relative error of every output, by name
    notes: tuple[str, ...] = ()
    reason: str = ""                  # why this kind (auto), or the --fidelity given

    @property
    def headline(self) -> float:
        """The kind's headline figure, higher is better: top-1 agreement (classes), share of identical decoded
        sequences (sequence), IoU or per-pixel argmax agreement (dense), box F1 (yolo); 1 − relative error where
        the kind has none (other, or no box in the original's predictions)."""
        return self.headline_value if self.headline_value is not None else 1.0 - self.relative_error

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["headline"] = {"name": self.headline_name or "1 - relative_error", "value": self.headline}
        return out


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
                     *, batch_size: int = 64, provider: str = "cpu", judge: Judge | None = None) -> Fidelity | None:
    """Compare both models on ``indices`` of ``data``; None when there are no held-out samples.

    ``judge`` says how (``choose_judge``); by default ``auto`` on the shapes at the first held-out sample. Outputs
    are compared batch by batch and only the figures are kept.
    """
    if len(indices) == 0:
        return None
    indices = list(indices)
    if judge is None:
        from onnxprune.graph.normalise import static_shapes

        first = {k: (1, *v.shape[1:]) for k, v in data.load([int(indices[0])]).items()}
        judge = choose_judge(original, "auto", static_shapes(original, first), first)
    a, b = create_session(original, provider), create_session(pruned, provider)
    names = [o.name for o in original.graph.output]
    judged = names.index(judge.output) if judge.output in names else 0
    batch = fixed_batch(original) or batch_size
    meter = judge.meter()
    classify = judge.kind == "classes"
    with_labels = classify and data.labels is not None
    correct_a = correct_b = n = labelled = 0
    num, den = [0.0] * len(names), [0.0] * len(names)
    for idx, feed in data.batches(indices, batch):
        outs_a, outs_b = a.run(names, feed), b.run(names, feed)
        for k, (oa, ob) in enumerate(zip(outs_a, outs_b)):
            oa, ob = np.asarray(oa, dtype=np.float64), np.asarray(ob, dtype=np.float64)
            num[k] += float(np.sum((oa - ob) ** 2))
            den[k] += float(np.sum(oa ** 2))
        ya = np.asarray(outs_a[judged], dtype=np.float64)
        yb = np.asarray(outs_b[judged], dtype=np.float64)
        del outs_a, outs_b
        n += len(idx)
        meter.update(ya, yb)
        if with_labels and class_scores(ya).ndim == 2:  # one class per sample (not per position)
            labels = data.labels[np.asarray(idx)]
            labelled += len(idx)
            correct_a += int(np.sum(class_scores(ya).argmax(axis=1) == labels))
            correct_b += int(np.sum(class_scores(yb).argmax(axis=1) == labels))
    outcome = meter.result()
    errors = {name: float(np.sqrt(nu / de)) if de > 0 else 0.0 for name, nu, de in zip(names, num, den)}
    return Fidelity(
        samples=n,
        top1_agreement=outcome.headline if classify else None,
        relative_error=errors[names[judged]],
        accuracy_before=correct_a / labelled if labelled else None,
        accuracy_after=correct_b / labelled if labelled else None,
        kind=judge.kind,
        output=names[judged],
        metrics=outcome.metrics,
        headline_name=outcome.headline_name,
        headline_value=outcome.headline,
        output_errors=errors,
        notes=tuple(outcome.notes),
        reason=judge.reason,
    )
