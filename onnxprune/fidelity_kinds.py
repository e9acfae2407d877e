"""What "the pruned model still does the same" means for a model's output (``--fidelity``).

``choose_judge`` picks a kind for the first graph output, by its shape and the op that produces it (``auto``), or
checks that an explicit kind fits. Each kind has a meter that ``measure_fidelity`` feeds batch by batch, so no
held-out output is kept beyond its batch:

* ``classes``: top-1 agreement of the argmax over axis 1 (and accuracy against labels, in ``verify``).
* ``sequence`` (CTC, ``[N, T, C]``): per-step argmax agreement; greedy CTC decoding (argmax per step, repeats
  collapsed, blank ``CTC_BLANK`` = 0 dropped) of both models, the share of samples whose decoded sequences are
  identical, and the character error rate: edit distance of the pruned decoding to the original's, summed over
  the samples, over the summed length of the original's decodings.
* ``dense`` (``[N, C, H, W]`` maps): C = 1, IoU of the maps thresholded (above 0.5; above 0 when the map is not a
  Sigmoid's output, i.e. logits) pooled over every pixel of every held-out sample (intersection and union counts
  summed, then divided); C > 1, per-pixel argmax agreement over axis 1, pooled the same way.
* ``yolo`` (raw heads ``[N, 4+C, A]``, YOLOv8; ``[N, A, 5+C]``, YOLOv5 with objectness): boxes decoded per image
  (confidence = best class score, times objectness for v5, above 0.25), class-aware NMS at IoU 0.45, at most 300
  boxes; the pruned model's boxes are matched greedily (highest IoU first) to the original's of the same class at
  IoU >= 0.5; precision, recall and F1 pooled over all held-out images, the original's boxes as the reference.
  When the original predicts no box above 0.25 on any held-out image, the figures are taken at confidence 0.05
  instead (and say so); when it predicts none there either, F1 is undefined (None, with a note).
* ``other``: none of these; only the relative output error (measured for every kind and every output).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.graph.input_shapes import known_dim

KINDS = ("auto", "classes", "sequence", "dense", "yolo")
# what each kind's headline figure (``Fidelity.headline_name``) is called in summaries and figures
HEADLINE_LABELS = {"top1_agreement": "top-1 agreement", "sequences_identical": "share of identical decoded sequences",
                   "iou": "mask IoU", "pixel_agreement": "per-pixel argmax agreement", "f1": "box F1"}
CTC_BLANK = 0
DENSE_THRESHOLD = 0.5
YOLO_CONFIDENCE = 0.25
YOLO_FALLBACK_CONFIDENCE = 0.05
YOLO_NMS_IOU = 0.45
YOLO_MATCH_IOU = 0.5
YOLO_MAX_BOXES = 300
YOLO_MAX_CANDIDATES = 30000   # boxes entering NMS per image, best scores first (ultralytics' max_nms)

AUTO_RULE = (
    "auto judges the first output by its shape and producing op: [N, C] with C >= 2 -> classes; [N, T, C] from a "
    "Softmax/LogSoftmax over the last axis or a MatMul/Gemm (C >= 2) whose T grows with the input width -> "
    "sequence (greedy CTC, blank 0); [N, C, H, W] at a quarter or more of the input's resolution (and not one of "
    "several outputs at different resolutions) -> dense; [N, 4+C, A] with A >= 4*(4+C) (YOLOv8) or [N, A, 5+C] "
    "with A >= 4*(5+C) (YOLOv5, objectness) -> yolo; anything else: relative output error only.")


@dataclass(frozen=True)
class Judge:
    """How the held-out outputs are compared: the kind, the judged output and what its meter needs."""

    kind: str                          # classes, sequence, dense, yolo, or other (relative error only)
    output: str                        # the judged output: the first graph output
    outputs: tuple[str, ...] = ()      # every graph output (each gets its relative error)
    layout: str | None = None          # yolo: "v8" ([N, 4+C, A]) or "v5" ([N, A, 5+C])
    mask_coefficients: int = 0         # yolo segmentation: trailing mask coefficients that are not class scores
    threshold: float = DENSE_THRESHOLD  # dense, one channel: a pixel is in the mask above this value
    reason: str = ""                   # why auto chose the kind

    def meter(self) -> "Meter":
        if self.kind == "classes":
            return ClassesMeter()
        if self.kind == "sequence":
            return SequenceMeter()
        if self.kind == "dense":
            return DenseMeter(self.threshold)
        if self.kind == "yolo":
            return YoloMeter(self.layout or "v8", self.mask_coefficients)
        return Meter()


# ---------------------------------------------------------------------------------------------------- choosing


_THROUGH = frozenset({"Identity", "Cast", "Dropout"})
_LAYOUT = _THROUGH | {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Resize", "Upsample"}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _source(producers: Mapping[str, onnx.NodeProto], name: str, through: frozenset | set) -> onnx.NodeProto | None:
    """The first node up from tensor ``name`` whose op is not in ``through`` (following input 0)."""
    node = producers.get(name)
    for _ in range(64):
        if node is None or node.op_type not in through or not node.input:
            return node
        node = producers.get(node.input[0])
    return node


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _softmax_last_axis(model: onnx.ModelProto, node: onnx.NodeProto, rank: int) -> bool:
    if node.op_type not in ("Softmax", "LogSoftmax"):
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if _opset(model) >= 13 else 1)
    return axis % rank == rank - 1


def _declared(vi: onnx.ValueInfoProto) -> tuple:
    return tuple(known_dim(d) for d in vi.type.tensor_type.shape.dim)


def _shape_of(model: onnx.ModelProto, name: str, shapes: Mapping[str, Sequence[int]]) -> tuple:
    if name in shapes:
        return tuple(int(d) for d in shapes[name])
    vi = next((o for o in model.graph.output if o.name == name), None)
    return () if vi is None else _declared(vi)


def _image_size(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> tuple[int, int] | None:
    """The largest H, W of the rank-4 inputs, at the shapes the model is run at."""
    sizes = [tuple(s[-2:]) for s in input_shapes.values() if len(s) == 4]
    return (max(s[0] for s in sizes), max(s[1] for s in sizes)) if sizes else None


def yolo_layout(shape: Sequence[int | None], *, strict: bool, mask_coefficients: int = 0) -> str | None:
    """'v8' for [N, 4+C, A], 'v5' for [N, A, 5+C], None for neither. ``strict`` (auto) asks A >= 4 x the box
    row length; otherwise the anchors need only be the longer axis."""
    if len(shape) != 3 or any(d is None or d < 1 for d in shape[1:]):
        return None
    rows, cols = int(shape[1]), int(shape[2])
    if rows - mask_coefficients >= 5 and (cols >= 4 * rows if strict else cols > rows):
        return "v8"
    if cols - mask_coefficients >= 6 and (rows >= 4 * cols if strict else rows > cols):
        return "v5"
    return None


def _mask_coefficients(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> int:
    """Mask coefficients per box of a YOLO segmentation head: the channels of a rank-4 'proto' second output."""
    for o in model.graph.output[1:]:
        s = _shape_of(model, o.name, shapes)
        if len(s) == 4 and s[1]:
            return int(s[1])
    return 0


def _time_varies(model: onnx.ModelProto, name: str, shapes: Mapping[str, Sequence[int]],
                 input_shapes: Mapping[str, Sequence[int]]) -> bool | None:
    """Whether axis 1 of output ``name`` changes when every input with a dynamic last axis is twice as wide
    (shape inference); None when no input's width is dynamic or inference cannot tell."""
    from onnxprune.graph.io import model_inputs
    from onnxprune.graph.normalise import static_shapes

    wider = dict(input_shapes)
    changed = False
    for inp in model_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if inp.name in wider and len(dims) >= 2 and not dims[-1].HasField("dim_value"):
            s = tuple(wider[inp.name])
            wider[inp.name] = (*s[:-1], 2 * s[-1])
            changed = True
    if not changed:
        return None
    try:
        before, after = shapes.get(name), static_shapes(model, wider).get(name)
    except Exception:
        return None
    if before is None or after is None or len(before) != 3 or len(after) != 3:
        return None
    return before[1] != after[1]


def _auto(model: onnx.ModelProto, name: str, shape: tuple, shapes: Mapping[str, Sequence[int]],
          input_shapes: Mapping[str, Sequence[int]]) -> Judge:
    producers = _producers(model)
    outputs = tuple(o.name for o in model.graph.output)
    known = bool(shape) and all(d is not None for d in shape[1:])
    rank = len(shape)
    if not known:
        return Judge("other", name, outputs, reason="its shape is not known")
    if rank == 2 and shape[1] >= 2:
        return Judge("classes", name, outputs, reason=f"[N, {shape[1]}] class scores")
    if rank > 2 and shape[1] >= 2 and all(d == 1 for d in shape[2:]):  # Caffe2's [N, 1000, 1, 1] classifier
        return Judge("classes", name, outputs,
                     reason=f"[N, {shape[1]}, {', '.join(str(d) for d in shape[2:])}] class scores")
    if rank == 3:
        near = _source(producers, name, _THROUGH)
        far = _source(producers, name, _LAYOUT | {"Add"})
        softmax = near is not None and _softmax_last_axis(model, near, rank)
        linear = far is not None and far.op_type in ("MatMul", "Gemm")
        if (softmax or linear) and shape[2] >= 2:
            varies = _time_varies(model, name, shapes, input_shapes)
            if varies or (varies is None and softmax):
                how = "grows with the input width" if varies else "after a Softmax over the classes"
                return Judge("sequence", name, outputs, reason=f"[N, T={shape[1]}, C={shape[2]}] per-step scores; T {how}")
        if not softmax and not linear:
            nm = _mask_coefficients(model, shapes)
            for coefficients in ((nm, 0) if nm else (0,)):
                layout = yolo_layout(shape, strict=True, mask_coefficients=coefficients)
                if layout is not None:
                    return Judge("yolo", name, outputs, layout=layout, mask_coefficients=coefficients,
                                 reason=f"{'[N, 4+C, anchors]' if layout == 'v8' else '[N, anchors, 5+C]'} "
                                        f"YOLO{layout} head")
    if rank == 4 and shape[2] >= 2 and shape[3] >= 2:
        image = _image_size(model, input_shapes)
        fine = image is None or (4 * shape[2] >= image[0] and 4 * shape[3] >= image[1])
        others = [_shape_of(model, o, shapes) for o in outputs[1:]]
        multiscale = any(len(s) == 4 and tuple(s[2:]) != tuple(shape[2:]) for s in others)
        if fine and not multiscale:
            return _dense(model, name, shape, outputs, producers)
        if multiscale:
            return Judge("other", name, outputs, reason=f"[N, {shape[1]}, {shape[2]}, {shape[3]}] is one of several "
                                                       "maps at different resolutions (a detection head?)")
    return Judge("other", name, outputs, reason=f"shape [{', '.join('N' if i == 0 else str(d) for i, d in enumerate(shape))}]"
                                               " fits no kind")


def _dense(model, name, shape, outputs, producers) -> Judge:
    threshold = DENSE_THRESHOLD
    if shape[1] == 1:
        src = _source(producers, name, _LAYOUT)
        if src is None or src.op_type not in ("Sigmoid", "HardSigmoid"):
            threshold = 0.0   # logits: sigmoid(0) = 0.5
    return Judge("dense", name, outputs, threshold=threshold,
                 reason=f"[N, {shape[1]}, {shape[2]}, {shape[3]}] {'mask' if shape[1] == 1 else 'class maps'}")


def choose_judge(model: onnx.ModelProto, requested: str, shapes: Mapping[str, Sequence[int]],
                 input_shapes: Mapping[str, Sequence[int]]) -> Judge:
    """The judge of the first output for ``--fidelity requested``; UsageError when an explicit kind does not fit.

    ``shapes`` are static tensor shapes at ``input_shapes`` (``static_shapes``), batch 1.
    """
    if requested not in KINDS:
        raise UsageError(f"--fidelity must be one of {', '.join(KINDS)}, got '{requested}'.")
    outputs = tuple(o.name for o in model.graph.output)
    name = outputs[0]
    shape = _shape_of(model, name, shapes)
    if requested == "auto":
        return _auto(model, name, shape, shapes, input_shapes)
    text = "[" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"
    known = bool(shape) and all(d is not None for d in shape[1:])

    def refuse(wants: str) -> UsageError:
        return UsageError(f"--fidelity {requested}: output '{name}' has shape {text}, not {wants}.",
                          note="--fidelity auto picks what fits (relative output error only when nothing does)")

    if requested == "classes":
        if not (known and len(shape) >= 2 and shape[1] >= 2):
            raise refuse("[N, C, ...] class scores with C >= 2")
        return Judge("classes", name, outputs, reason="--fidelity classes")
    if requested == "sequence":
        if not (known and len(shape) == 3 and shape[2] >= 2):
            raise refuse("[N, T, C] per-step class scores with C >= 2")
        return Judge("sequence", name, outputs, reason="--fidelity sequence")
    if requested == "dense":
        if not (known and len(shape) == 4 and shape[1] >= 1):
            raise refuse("an [N, C, H, W] map")
        return _dense(model, name, shape, outputs, _producers(model))
    nm = _mask_coefficients(model, shapes)
    for coefficients in ((nm, 0) if nm else (0,)):
        layout = yolo_layout(shape, strict=False, mask_coefficients=coefficients) if known else None
        if layout is not None:
            return Judge("yolo", name, outputs, layout=layout, mask_coefficients=coefficients, reason="--fidelity yolo")
    raise refuse("a YOLO head ([N, 4+C, anchors] as YOLOv8, or [N, anchors, 5+C] as YOLOv5)")


# ---------------------------------------------------------------------------------------------------- metrics


@dataclass
class Outcome:
    """A meter's figures: the kind's metrics, the headline figure (for --target-fidelity) and notes."""

    metrics: dict = field(default_factory=dict)
    headline: float | None = None
    headline_name: str | None = None
    notes: list[str] = field(default_factory=list)


class Meter:
    """Relative error only (kind 'other'): nothing to accumulate."""

    def update(self, ya: np.ndarray, yb: np.ndarray) -> None:
        pass

    def result(self) -> Outcome:
        return Outcome()


def class_scores(y: np.ndarray) -> np.ndarray:
    """[N, C] scores of an [N, C, 1, ...] output (a classifier that ends in a 1×1 map); other arrays as they are."""
    return y.reshape(y.shape[0], y.shape[1]) if y.ndim > 2 and all(d == 1 for d in y.shape[2:]) else y


class ClassesMeter(Meter):
    """Top-1 agreement over axis 1 (per position for rank > 2), averaged per sample."""

    def __init__(self) -> None:
        self.agree = 0.0
        self.n = 0

    def update(self, ya, yb):
        ya, yb = class_scores(ya), class_scores(yb)
        self.agree += float(np.mean(ya.argmax(axis=1) == yb.argmax(axis=1))) * len(ya)
        self.n += len(ya)

    def result(self):
        value = self.agree / self.n if self.n else None
        return Outcome({"top1_agreement": value}, value, "top1_agreement")


def ctc_greedy(path: Sequence[int] | np.ndarray, blank: int = CTC_BLANK) -> tuple[int, ...]:
    """Greedy CTC decoding of one argmax path: collapse repeats, then drop ``blank``."""
    p = np.asarray(path).reshape(-1)
    if p.size == 0:
        return ()
    keep = np.ones(p.size, dtype=bool)
    keep[1:] = p[1:] != p[:-1]
    p = p[keep]
    return tuple(int(v) for v in p[p != blank])


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class SequenceMeter(Meter):
    """Per-step argmax agreement, identical greedy-CTC decodings, character error rate (pooled)."""

    def __init__(self, blank: int = CTC_BLANK) -> None:
        self.blank = blank
        self.steps = self.step_agree = self.n = self.identical = self.edits = self.chars = 0

    def update(self, ya, yb):
        pa, pb = ya.argmax(axis=-1), yb.argmax(axis=-1)
        self.steps += pa.size
        self.step_agree += int(np.sum(pa == pb))
        for ra, rb in zip(pa.reshape(len(pa), -1), pb.reshape(len(pb), -1)):
            sa, sb = ctc_greedy(ra, self.blank), ctc_greedy(rb, self.blank)
            self.n += 1
            self.identical += sa == sb
            self.edits += edit_distance(sb, sa)
            self.chars += len(sa)

    def result(self):
        notes = []
        if self.chars:
            cer = self.edits / self.chars
        else:
            cer = None
            notes.append("the original decodes to an empty sequence on every held-out sample: the character error "
                         "rate is undefined")
        identical = self.identical / self.n if self.n else None
        return Outcome({"sequences_identical": identical,
                        "step_agreement": self.step_agree / self.steps if self.steps else None,
                        "character_error_rate": cer, "blank": self.blank,
                        "original_characters": self.chars, "edits": self.edits},
                       identical, "sequences_identical", notes)


class DenseMeter(Meter):
    """One channel: pooled IoU of the thresholded maps; several: pooled per-pixel argmax agreement."""

    def __init__(self, threshold: float = DENSE_THRESHOLD) -> None:
        self.threshold = threshold
        self.intersection = self.union = self.agree = self.pixels = 0
        self.channels: int | None = None

    def update(self, ya, yb):
        self.channels = ya.shape[1]
        if self.channels == 1:
            ma, mb = ya > self.threshold, yb > self.threshold
            self.intersection += int(np.count_nonzero(ma & mb))
            self.union += int(np.count_nonzero(ma | mb))
            self.pixels += ma.size
        else:
            same = ya.argmax(axis=1) == yb.argmax(axis=1)
            self.agree += int(np.count_nonzero(same))
            self.pixels += same.size

    def result(self):
        if self.channels == 1:
            notes = []
            iou = self.intersection / self.union if self.union else None
            if iou is None:
                notes.append(f"neither model marks any pixel above {self.threshold:g} on the held-out samples: "
                             "the IoU is undefined")
            return Outcome({"iou": iou, "threshold": self.threshold, "pixels": self.pixels,
                            "intersection": self.intersection, "union": self.union}, iou, "iou", notes)
        value = self.agree / self.pixels if self.pixels else None
        return Outcome({"pixel_agreement": value, "pixels": self.pixels}, value, "pixel_agreement")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [n, 4] with every box in ``b`` [m, 4] (x1, y1, x2, y2): [n, m]."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = YOLO_NMS_IOU,
        max_boxes: int = YOLO_MAX_BOXES) -> np.ndarray:
    """Class-aware greedy non-maximum suppression: indices kept, best score first. A box is dropped when its IoU
    with a kept box of the same class is above ``iou``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes + (np.asarray(classes, dtype=np.float64) * span)[:, None]  # classes never overlap
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size and len(keep) < max_boxes:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(shifted[i:i + 1], shifted[rest])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo(y: np.ndarray, layout: str, mask_coefficients: int = 0, confidence: float = YOLO_CONFIDENCE,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (x1, y1, x2, y2), scores and classes of one image's raw head after thresholding and NMS.

    v8: ``y`` is [4+C, A], rows cx, cy, w, h then class scores. v5: [A, 5+C], columns cx, cy, w, h, objectness,
    class scores; score = objectness x class score. Trailing ``mask_coefficients`` are ignored.
    """
    p = np.asarray(y, dtype=np.float64)
    p = p.T if layout == "v8" else p
    end = p.shape[1] - mask_coefficients
    if layout == "v8":
        scores = p[:, 4:end]
    else:
        scores = p[:, 4:5] * p[:, 5:end]
    conf, cls = scores.max(axis=1), scores.argmax(axis=1)
    pick = np.flatnonzero(conf > confidence)
    if pick.size > YOLO_MAX_CANDIDATES:
        pick = pick[np.argsort(-conf[pick], kind="stable")[:YOLO_MAX_CANDIDATES]]
    xywh = p[pick, :4]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    keep = nms(boxes, conf[pick], cls[pick])
    return boxes[keep], conf[pick][keep], cls[pick][keep]


def match_boxes(ref_boxes: np.ndarray, ref_classes: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                iou: float = YOLO_MATCH_IOU) -> int:
    """Matches between one image's reference boxes and predicted boxes: greedy, highest IoU first, each box at
    most once, same class and IoU >= ``iou``."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return 0
    m = box_iou(ref_boxes, boxes)
    m[np.asarray(ref_classes)[:, None] != np.asarray(classes)[None, :]] = 0.0
    rows, cols = np.nonzero(m >= iou)
    order = np.argsort(-m[rows, cols], kind="stable")
    used_r, used_c, matched = set(), set(), 0
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            matched += 1
    return matched


class YoloMeter(Meter):
    """Box precision, recall and F1 of the pruned model against the original's boxes (pooled over images)."""

    def __init__(self, layout: str = "v8", mask_coefficients: int = 0) -> None:
        self.layout, self.mask_coefficients = layout, mask_coefficients
        self.counts = {YOLO_CONFIDENCE: [0, 0, 0], YOLO_FALLBACK_CONFIDENCE: [0, 0, 0]}  # original, pruned, matched

    def update(self, ya, yb):
        for a, b in zip(ya, yb):
            for conf, count in self.counts.items():
                if conf != YOLO_CONFIDENCE and self.counts[YOLO_CONFIDENCE][0]:
                    continue  # the fallback is only needed while the original has no box at the main threshold
                ra = decode_yolo(a, self.layout, self.mask_coefficients, conf)
                rb = decode_yolo(b, self.layout, self.mask_coefficients, conf)
                count[0] += len(ra[0])
                count[1] += len(rb[0])
                count[2] += match_boxes(ra[0], ra[2], rb[0], rb[2])

    def result(self):
        notes = []
        conf = YOLO_CONFIDENCE
        if not self.counts[conf][0]:
            conf = YOLO_FALLBACK_CONFIDENCE
            if self.counts[conf][0]:
                notes.append(f"the original predicts no box above confidence {YOLO_CONFIDENCE:g} on any held-out "
                             f"image: boxes compared at confidence {conf:g}")
        original, pruned, matched = self.counts[conf]
        metrics = {"layout": self.layout, "confidence": conf, "nms_iou": YOLO_NMS_IOU, "match_iou": YOLO_MATCH_IOU,
                   "boxes_original": original, "boxes_pruned": pruned, "matched": matched}
        if not original:
            notes.append(f"the original predicts no box above confidence {YOLO_FALLBACK_CONFIDENCE:g} on any "
                         "held-out image: box precision/recall/F1 are undefined (relative output error only)")
            metrics.update(precision=None, recall=None, f1=None)
            return Outcome(metrics, None, "f1", notes)
        precision = matched / pruned if pruned else 0.0
        recall = matched / original
        f1 = 2 * matched / (original + pruned)
        metrics.update(precision=precision, recall=recall, f1=f1)
        return Outcome(metrics, f1, "f1", notes)
