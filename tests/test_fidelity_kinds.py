"""--fidelity: the metrics of each output kind, auto detection on tiny graphs, and end-to-end summaries."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.compress import CompressOptions, _headline, compress
from onnxprune.errors import UsageError
from onnxprune.fidelity_kinds import (ClassesMeter, DenseMeter, SequenceMeter, YoloMeter, box_iou, choose_judge,
                                      ctc_greedy, decode_yolo, edit_distance, match_boxes, nms, yolo_layout)
from onnxprune.graph.normalise import static_shapes
from onnxprune.plan import Target
from onnxprune.report import render_summary
from onnxprune.verify import Fidelity

from conftest import SAMPLES, run_cli

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"
ZOO = SAMPLES / "zoo"


# ------------------------------------------------------------------------------------------------ sequences


def test_ctc_greedy_collapses_repeats_then_drops_blanks():
    assert ctc_greedy([0, 1, 1, 0, 1, 2, 2, 2, 0, 0]) == (1, 1, 2)
    assert ctc_greedy([3, 3, 3]) == (3,)
    assert ctc_greedy([0, 0, 0]) == ()
    assert ctc_greedy([]) == ()
    assert ctc_greedy([1, 0, 1], blank=1) == (0,)


def test_edit_distance():
    assert edit_distance((), ()) == 0
    assert edit_distance((1, 2, 3), ()) == 3 and edit_distance((), (1, 2)) == 2
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance((1, 2, 3), (1, 3)) == 1
    assert edit_distance((1, 2), (2, 1)) == 2


def _one_hot(paths, classes=4):
    paths = np.asarray(paths)
    return np.eye(classes)[paths]   # [N, T, C]


def test_sequence_meter_counts_identical_decodings_steps_and_characters():
    a = _one_hot([[1, 1, 0, 2, 0], [3, 0, 3, 0, 0]])     # decodes (1, 2) and (3, 3)
    b = _one_hot([[1, 0, 0, 2, 2], [3, 3, 3, 0, 0]])     # decodes (1, 2) and (3,): one deletion
    meter = SequenceMeter()
    meter.update(a[:1], b[:1])        # streamed: one batch at a time
    meter.update(a[1:], b[1:])
    out = meter.result()
    assert out.metrics["sequences_identical"] == 0.5 == out.headline
    assert out.metrics["step_agreement"] == pytest.approx(7 / 10)   # 3 + 4 of 10 steps
    assert out.metrics["character_error_rate"] == pytest.approx(1 / 4)   # 1 edit over 4 original characters
    assert out.headline_name == "sequences_identical" and not out.notes


def test_sequence_meter_all_blank_original_has_no_character_error_rate():
    a = _one_hot([[0, 0, 0]])
    meter = SequenceMeter()
    meter.update(a, a)
    out = meter.result()
    assert out.metrics["sequences_identical"] == 1.0 and out.metrics["character_error_rate"] is None
    assert "empty sequence" in out.notes[0]


# ------------------------------------------------------------------------------------------------ dense maps


def test_dense_iou_is_pooled_over_all_pixels_of_all_samples():
    a = np.zeros((2, 1, 2, 2))
    b = np.zeros((2, 1, 2, 2))
    a[0, 0, 0, :] = 0.9        # sample 0: original 2 pixels, pruned 1 of them
    b[0, 0, 0, 0] = 0.8
    a[1, 0] = 0.7              # sample 1: original 4 pixels, pruned the same 4
    b[1, 0] = 0.6
    meter = DenseMeter(0.5)
    meter.update(a[:1], b[:1])
    meter.update(a[1:], b[1:])
    out = meter.result()
    # pooled: (1 + 4) / (2 + 4); the mean of per-sample IoUs would be (0.5 + 1) / 2
    assert out.metrics["iou"] == pytest.approx(5 / 6) == out.headline
    assert out.metrics["intersection"] == 5 and out.metrics["union"] == 6 and out.metrics["pixels"] == 8


def test_dense_empty_masks_have_no_iou_and_class_maps_use_argmax():
    meter = DenseMeter(0.5)
    meter.update(np.zeros((1, 1, 3, 3)), np.full((1, 1, 3, 3), 0.5))   # 0.5 is not above 0.5
    out = meter.result()
    assert out.metrics["iou"] is None and out.headline is None and "undefined" in out.notes[0]
    a = np.zeros((1, 3, 2, 2))
    a[0, 1] = 1.0                      # class 1 everywhere
    b = a.copy()
    b[0, 2, 0, 0] = 2.0                # one pixel flips to class 2
    meter = DenseMeter()
    meter.update(a, b)
    assert meter.result().metrics["pixel_agreement"] == pytest.approx(3 / 4)


def test_classes_meter_matches_argmax_over_axis_1():
    meter = ClassesMeter()
    meter.update(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([[0.2, 0.7], [0.4, 0.6]]))
    assert meter.result().headline == 0.5


# ------------------------------------------------------------------------------------------------ boxes


def test_box_iou_and_class_aware_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    iou = box_iou(boxes[:1], boxes)
    assert iou[0, 0] == 1.0 and iou[0, 1] == pytest.approx(81 / 119) and iou[0, 3] == 0.0
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # box 1 overlaps box 0 (IoU 0.68 > 0.45, same class): suppressed; box 2 is the same box in another class: kept
    assert nms(boxes, scores, np.array([0, 0, 1, 0])).tolist() == [0, 2, 3]
    assert nms(boxes, scores, np.array([0, 0, 1, 0]), max_boxes=2).tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).size == 0


def test_match_boxes_greedy_same_class_iou_half():
    ref = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    got = np.array([[1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 45, 45]], dtype=float)
    # ref 0 takes got 1 (IoU 1.0, before got 0 at 0.68); ref 1 / got 2 differ in class; ref 2 / got 3: IoU 0.25
    assert match_boxes(ref, np.array([0, 1, 2]), got, np.array([0, 0, 3, 2])) == 1
    assert match_boxes(ref, np.array([0, 1, 2]), got, np.array([0, 0, 1, 2])) == 2
    assert match_boxes(ref[:0], np.zeros(0), got, np.zeros(4)) == 0


def _v8_head(boxes_cxcywh, class_scores, anchors=40):
    """[4+C, A]: the given boxes in the first anchors, zero scores elsewhere."""
    c = class_scores.shape[1]
    head = np.zeros((4 + c, anchors))
    head[:4, :len(boxes_cxcywh)] = np.asarray(boxes_cxcywh, dtype=float).T
    head[4:, :len(class_scores)] = class_scores.T
    head[2:4, len(boxes_cxcywh):] = 1.0
    return head


def test_decode_v8_and_v5_layouts_agree():
    boxes = [[10, 10, 8, 8], [11, 10, 8, 8], [40, 40, 10, 10]]     # box 1 overlaps box 0, same class
    scores = np.array([[0.9, 0.0], [0.6, 0.1], [0.1, 0.3]])
    v8 = _v8_head(boxes, scores)
    b8, s8, c8 = decode_yolo(v8, "v8")
    assert b8.tolist() == [[6, 6, 14, 14], [35, 35, 45, 45]] and c8.tolist() == [0, 1]
    assert s8 == pytest.approx([0.9, 0.3])
    # v5: [A, 5+C] with objectness: score = obj * class score
    v5 = np.concatenate([v8[:4].T, np.full((v8.shape[1], 1), 0.5), v8[4:].T], axis=1)
    b5, s5, c5 = decode_yolo(v5, "v5")
    assert b5.tolist() == [[6, 6, 14, 14]] and s5 == pytest.approx([0.45]) and c5.tolist() == [0]  # 0.15 < 0.25
    v5[:, 4] = 1.0
    b5, s5, c5 = decode_yolo(v5, "v5")
    assert b5.tolist() == b8.tolist() and c5.tolist() == c8.tolist()


def test_yolo_meter_precision_recall_f1_against_the_original():
    boxes = [[10, 10, 8, 8], [40, 40, 10, 10], [70, 70, 10, 10]]
    original = _v8_head(boxes, np.array([[0.9, 0], [0, 0.8], [0.7, 0]]))
    pruned = _v8_head(boxes, np.array([[0.9, 0], [0.8, 0], [0.1, 0]]))   # box 1 changes class, box 2 drops out
    meter = YoloMeter("v8")
    meter.update(original[None], pruned[None])
    meter.update(original[None], original[None])   # second image: identical
    out = meter.result()
    m = out.metrics
    assert (m["boxes_original"], m["boxes_pruned"], m["matched"]) == (6, 5, 4)
    assert m["precision"] == pytest.approx(4 / 5) and m["recall"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 4 / 11) == out.headline and m["confidence"] == 0.25 and not out.notes


def test_yolo_meter_without_boxes_falls_back_then_says_undefined():
    faint = _v8_head([[10, 10, 8, 8]], np.array([[0.1]]))   # above 0.05, below 0.25
    meter = YoloMeter("v8")
    meter.update(faint[None], faint[None])
    out = meter.result()
    assert out.metrics["confidence"] == 0.05 and out.metrics["f1"] == 1.0 and "0.05" in out.notes[0]
    empty = _v8_head([[10, 10, 8, 8]], np.array([[0.01]]))
    meter = YoloMeter("v8")
    meter.update(empty[None], faint[None])
    out = meter.result()
    assert out.metrics["f1"] is None and out.headline is None and "undefined" in out.notes[-1]
    fid = Fidelity(1, None, 0.2, None, None, kind="yolo", output="y", metrics=out.metrics, headline_name="f1",
                   headline_value=None, notes=tuple(out.notes))
    assert fid.headline == pytest.approx(0.8)   # --target-fidelity falls back to 1 - relative error
    assert _headline(fid) == pytest.approx(0.8)


def test_yolo_layouts():
    assert yolo_layout((1, 84, 8400), strict=True) == "v8"
    assert yolo_layout((1, 25200, 85), strict=True) == "v5"
    assert yolo_layout((1, 84, 50), strict=True) is None and yolo_layout((1, 84, 100), strict=False) == "v8"
    assert yolo_layout((1, 4, 8400), strict=False) is None      # no class row
    assert yolo_layout((1, 116, 8400), strict=True, mask_coefficients=32) == "v8"


# ------------------------------------------------------------------------------------------------ auto


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _judge(model, requested="auto", **inputs):
    inputs = inputs or {i.name: tuple(d.dim_value or 1 for d in i.type.tensor_type.shape.dim) for i in model.graph.input}
    return choose_judge(model, requested, static_shapes(model, inputs), inputs)


def _sequence_model(width="W", last="Softmax") -> onnx.ModelProto:
    """[N, 1, 4, W] -> Conv -> ReduceMean(H) -> Transpose -> MatMul -> Softmax/LogSoftmax: [N, W, 5]."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 5])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w2"], ["l"])]
    nodes.append(helper.make_node(last, ["l"], ["y"], axis=-1) if last != "MatMul" else helper.make_node("Identity", ["l"], ["y"]))
    inits = [("w1", rng.normal(size=(6, 1, 3, 3)).astype(np.float32)), ("w2", rng.normal(size=(6, 5)).astype(np.float32))]
    return _model(nodes, [x], [y], inits, opset=13)


def test_auto_softmax_over_time_steps_is_a_sequence():
    judge = _judge(_sequence_model(), x=(1, 1, 4, 16))
    assert judge.kind == "sequence" and "grows with the input width" in judge.reason
    assert _judge(_sequence_model(last="LogSoftmax"), x=(1, 1, 4, 16)).kind == "sequence"
    assert _judge(_sequence_model(last="MatMul"), x=(1, 1, 4, 16)).kind == "sequence"   # T follows the width
    # a static width: T cannot be seen to vary; a Softmax over the last axis is enough, a bare MatMul is not
    assert _judge(_sequence_model(16), x=(1, 1, 4, 16)).kind == "sequence"
    assert _judge(_sequence_model(16, last="MatMul"), x=(1, 1, 4, 16)).kind == "other"


def test_auto_sigmoid_map_is_dense_with_threshold_half_and_logits_at_zero():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])
    w = ("w", np.ones((1, 3, 1, 1), np.float32))
    sig = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])], [x], [y], [w])
    judge = _judge(sig, x=(1, 3, 16, 16))
    assert (judge.kind, judge.threshold) == ("dense", 0.5)
    logits = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [x], [y], [w])
    assert (_judge(logits, x=(1, 3, 16, 16)).kind, _judge(logits, x=(1, 3, 16, 16)).threshold) == ("dense", 0.0)
    coarse = _model([helper.make_node("Conv", ["x", "w"], ["y"], strides=[8, 8])], [x], [y], [w])   # 2 x 2
    assert _judge(coarse, x=(1, 3, 16, 16)).kind == "other"


def _caffe2_classifier(tmp_path=None):
    """Conv -> GlobalAveragePool -> 1x1 Conv: scores [N, 10, 1, 1], as Caffe2's SqueezeNet ends."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Conv", ["g", "w2"], ["y"])]
    inits = [("w1", rng.normal(size=(16, 3, 3, 3)).astype(np.float32)),
             ("w2", rng.normal(size=(10, 16, 1, 1)).astype(np.float32))]
    return _model(nodes, [x], [y], inits)


def test_auto_one_by_one_score_map_is_classes(tmp_path):
    judge = _judge(_caffe2_classifier(), x=(1, 3, 8, 8))
    assert judge.kind == "classes" and "[N, 10, 1, 1] class scores" in judge.reason
    meter = ClassesMeter()
    a = np.eye(10)[[1, 2, 3, 4]][:, :, None, None]
    b = np.eye(10)[[1, 2, 3, 5]][:, :, None, None]
    meter.update(a, b)
    assert meter.result().headline == 0.75
    # end to end, with labels: top-1 accuracy before and after, as for [N, C] scores
    path = tmp_path / "caffe2_like.onnx"
    onnx.save(_caffe2_classifier(), str(path))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(60, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 10, 60))
    result = compress(path, tmp_path / "data.npz", CompressOptions(target=Target("flops", 0.6), holdout=0.5))
    fidelity = result.report.fidelity
    assert fidelity.kind == "classes" and fidelity.top1_agreement is not None
    assert fidelity.accuracy_before is not None and fidelity.accuracy_after is not None


def _yolo_model(v5=False) -> onnx.ModelProto:
    """Concat of boxes [N, 4, A] and sigmoid class scores [N, 2, A] (A = 64), optionally transposed with objectness."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "a", "b"])
    shape = ("s", np.array([0, -1, 64], np.int64))
    nodes = [helper.make_node("Conv", ["x", "wb"], ["b"]), helper.make_node("Reshape", ["b", "s"], ["br"]),
             helper.make_node("Conv", ["x", "wc"], ["c"]), helper.make_node("Sigmoid", ["c"], ["cs"]),
             helper.make_node("Reshape", ["cs", "s"], ["cr"])]
    rows = 7 if v5 else 6
    inits = [("wb", np.ones((4, 3, 1, 1), np.float32)), ("wc", np.ones((rows - 4, 3, 1, 1), np.float32)), shape]
    if v5:
        nodes += [helper.make_node("Concat", ["br", "cr"], ["cat"], axis=1),
                  helper.make_node("Transpose", ["cat"], ["y"], perm=[0, 2, 1])]
    else:
        nodes.append(helper.make_node("Concat", ["br", "cr"], ["y"], axis=1))
    return _model(nodes, [x], [y], inits)


def test_auto_concat_head_is_yolo_v8_or_v5():
    judge = _judge(_yolo_model(), x=(1, 3, 8, 8))
    assert (judge.kind, judge.layout) == ("yolo", "v8")
    judge = _judge(_yolo_model(v5=True), x=(1, 3, 8, 8))
    assert (judge.kind, judge.layout) == ("yolo", "v5")


def test_explicit_kinds_that_do_not_fit_are_usage_errors():
    model = onnx.load(str(LENET))
    inputs = {"input": (1, 1, 32, 32)}
    shapes = static_shapes(model, inputs)
    assert choose_judge(model, "auto", shapes, inputs).kind == "classes"
    for kind in ("yolo", "sequence", "dense"):
        with pytest.raises(UsageError, match=f"--fidelity {kind}: output 'logits' has shape \\[N, 10\\]"):
            choose_judge(model, kind, shapes, inputs)
    with pytest.raises(UsageError, match="--fidelity must be one of"):
        compress(LENET, DIGITS, CompressOptions(fidelity="boxes"))


# ------------------------------------------------------------------------------------------------ end to end


def test_lenet_classes_line_keeps_its_meaning(tmp_path):
    report = tmp_path / "r.json"
    result = run_cli(["compress", LENET, "--data", DIGITS, "--target-flops", "0.25", "--holdout", "0.3",
                      "-o", tmp_path / "l.onnx", "--report", report])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("fidelity"))
    assert line.startswith("fidelity (classes): held-out samples: 179, top-1 agreement ")
    assert "relative output error" in line and "accuracy " in line and "->" in line
    fid = json.loads(report.read_text())["fidelity"]
    assert fid["kind"] == "classes" and fid["output"] == "logits" and fid["samples"] == 179
    assert fid["headline"] == {"name": "top1_agreement", "value": fid["top1_agreement"]}
    assert fid["top1_agreement"] > 0.9 and fid["accuracy_after"] > 0.9 and list(fid["output_errors"]) == ["logits"]


@pytest.mark.parametrize("kind", ["auto", "dense"])
def test_unet_dense_line_and_report_keys(tmp_path, kind):
    report = tmp_path / "r.json"
    result = run_cli(["compress", ZOO / "unet.ts.onnx", "--data", ZOO / "unet.npz", "--target-flops", "0.5",
                      "--holdout", "0.25", "--fidelity", kind, "-o", tmp_path / "u.onnx", "--report", report])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("fidelity"))
    assert line.startswith("fidelity (dense): held-out samples: 16, per-pixel argmax agreement ")
    assert "relative output error" in line and "top-1" not in line
    fid = json.loads(report.read_text())["fidelity"]
    assert fid["kind"] == "dense" and fid["output"] == "mask" and fid["top1_agreement"] is None
    assert set(fid["metrics"]) == {"pixel_agreement", "pixels"} and fid["metrics"]["pixels"] == 16 * 32 * 32
    assert 0 <= fid["metrics"]["pixel_agreement"] <= 1
    assert fid["headline"] == {"name": "pixel_agreement", "value": fid["metrics"]["pixel_agreement"]}


def test_sequence_model_end_to_end(tmp_path):
    path = tmp_path / "seq.onnx"
    onnx.save(_sequence_model(), path)
    data = tmp_path / "seq.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(40, 1, 4, 16)).astype(np.float32))
    result = compress(path, data, CompressOptions(target=Target("params", 0.9), holdout=0.25), write_unchanged=True)
    fid = result.report.fidelity
    assert fid.kind == "sequence" and fid.samples == 10 and fid.top1_agreement is None
    assert set(fid.metrics) >= {"sequences_identical", "step_agreement", "character_error_rate"}
    assert fid.headline == fid.metrics["sequences_identical"]
    line = next(x for x in render_summary(result.report).splitlines() if x.startswith("fidelity"))
    assert line.startswith("fidelity (sequence): held-out samples: 10, ")
    assert "of decoded sequences identical, per-step agreement " in line and "character error " in line


def test_multi_output_model_judges_the_first_and_gives_every_error(tmp_path):
    result = compress(ZOO / "yolo.ts.onnx", ZOO / "yolo.npz", CompressOptions(target=Target("flops", 0.7), holdout=0.25))
    fid = result.report.fidelity
    assert fid.kind == "other" and fid.output == "p3" and list(fid.output_errors) == ["p3", "p4"]
    assert fid.headline == pytest.approx(1 - fid.relative_error)
    text = render_summary(result.report)
    assert "fidelity (relative error only: " in text and "judged output 'p3' (the first of 2)" in text


def test_fidelity_yolo_on_a_classifier_is_one_usage_error(tmp_path):
    out = tmp_path / "l.onnx"
    result = run_cli(["compress", LENET, "--data", DIGITS, "--fidelity", "yolo", "-o", out])
    assert result.exit_code == 4, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: --fidelity yolo: output 'logits'")
    assert not out.exists()
