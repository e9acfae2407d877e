"""Score-guided positions: which layers a dense score head guides, how positions are drawn, and that shards, the
statistics files and the command line see the same guides."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnxprune.analysis import find_groups
from onnxprune.analysis.score_heads import position_log_weights, score_guides
from onnxprune.calibration.blocks import PairwiseSum
from onnxprune.calibration.collect import CalibrationSettings, _sampled_positions, merge_blocks
from onnxprune.calibration.sources import ImageOptions
from onnxprune.compress import CompressOptions, calibrated_consumers, first_pass, load_inputs

from conftest import SAMPLES
from conftest import run_cli as run

LOOK = SAMPLES / "lookalikes"
ZOO = SAMPLES / "zoo"
YOLO = LOOK / "yolov8_like.ts.onnx"
YOLO_CALIB = LOOK / "yolov8_like_calib"
YOLO_IMAGES = ImageOptions(size=(320, 320))


def _guides(model_path, data, image: ImageOptions = ImageOptions()) -> dict[str, str]:
    loaded = load_inputs(model_path, data, CompressOptions(image=image, num_samples=4))
    analysis = find_groups(loaded.model, loaded.shapes)
    return score_guides(loaded.model, analysis, calibrated_consumers(analysis))


@pytest.mark.parametrize("export", ["ts", "dynamo"])
def test_a_detectors_class_branches_are_guided_by_their_own_score_maps(export):
    """Three scales, each class branch (two 3x3 convs and the 1x1 score conv) guided by its own map; the shared
    neck and the box branches (they reach the box output, not the scores) are not."""
    path = LOOK / f"yolov8_like.{export}.onnx"
    guides = _guides(path, YOLO_CALIB, YOLO_IMAGES)
    maps = set(guides.values())
    assert len(guides) == 9 and len(maps) == 3
    assert all(sum(v == m for v in guides.values()) == 3 for m in maps)
    if export == "ts":   # the TorchScript exporter keeps the module names
        assert all("/cv3." in node for node in guides), guides
        assert all(m.startswith("/detect/cv3.") and m.endswith("2/Conv_output_0") for m in maps), maps


@pytest.mark.parametrize("path,data", [
    (LOOK / "ppocr_det_like.ts.onnx", LOOK / "ppocr_det_like_calib"),   # a Sigmoid over the text map itself
    (ZOO / "efficientnet.ts.onnx", ZOO / "efficientnet.npz"),     # SiLU and SE Sigmoids: activations, not scores
    (ZOO / "resnet_basic.ts.onnx", ZOO / "resnet_basic.npz"),
    (LOOK / "ppocr_rec_like.ts.onnx", LOOK / "ppocr_rec_like.npz"),   # a Softmax sequence head
], ids=lambda p: p.stem)
def test_models_without_a_detection_score_output_have_no_guides(path, data):
    image = ImageOptions(size=(320, 480)) if path.stem.startswith("ppocr_det") else ImageOptions()
    assert _guides(path, data, image) == {}


def test_weighted_positions_follow_the_weights_and_take_the_same_draws():
    positions, k = 400, 20
    log_weights = np.log(np.where(np.arange(positions) < 40, 1.0, 0.0) + 0.01)[None].repeat(200, axis=0)
    uniform, weighted = np.random.default_rng(3), np.random.default_rng(3)
    plain = _sampled_positions(uniform, 200, positions, k)
    picked = _sampled_positions(weighted, 200, positions, k, log_weights)
    assert uniform.random() == weighted.random()   # the generator advanced as much either way
    assert picked.shape == plain.shape == (200, k)
    assert all(len(set(row)) == k for row in picked.tolist())   # without replacement
    # 40 positions weigh 1.01, 360 weigh 0.01: about 40*1.01/(40*1.01+3.6) = 92 % of early draws are scored ones
    assert 0.75 < float(np.mean(picked < 40)) < 0.95
    assert abs(float(np.mean(plain < 40)) - 0.1) < 0.03
    assert _sampled_positions(weighted, 2, 10, 10, np.zeros((2, 10))) is None   # every position kept


def test_position_weights_are_the_largest_class_probability_with_a_floor():
    scores = np.array([[[[-50.0, 0.0]], [[-60.0, 3.0]]]])   # (N=1, C=2, H=1, W=2)
    got = np.exp(position_log_weights(scores))
    np.testing.assert_allclose(got, [[0.01, 0.01 + 1 / (1 + np.exp(-3.0))]], rtol=1e-12, atol=1e-15)


def test_guided_shards_add_up_to_the_single_pass_statistics_bit_for_bit():
    options = CompressOptions(calibration=CalibrationSettings(batch_size=4, max_positions=16), image=YOLO_IMAGES,
                              holdout=0.25)
    loaded = load_inputs(YOLO, YOLO_CALIB, options)
    first = first_pass(loaded, find_groups(loaded.model, loaded.shapes), options)
    assert len(first.settings.guides) == 9
    single = first.collect().total()
    summed = PairwiseSum(first.layout.count, merge_blocks)
    for k in (1, 2, 3):
        summed.extend(first.collect(k, 3).nodes)
    summed = summed.total()
    assert all(_same(entry.full, summed[node].full) for node, entry in single.items())
    # the guides change what a guided layer sees, and only that
    unguided = first_pass(loaded, find_groups(loaded.model, loaded.shapes),
                          CompressOptions(calibration=options.calibration, image=YOLO_IMAGES, holdout=0.25,
                                          score_positions=False)).collect().total()
    guided = dict(first.settings.guides)
    for node, entry in single.items():
        assert _same(entry.full, unguided[node].full) == (node not in guided), node


def _same(a, b) -> bool:
    """Whether two statistics hold the same sums, bit for bit."""
    x, y = a.to_arrays(), b.to_arrays()
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_compress_names_the_guided_layers_and_statistics_files_must_agree(tmp_path):
    common = [YOLO, "--data", YOLO_CALIB, "--image-size", "320", "--num-samples", "8", "--max-positions", "32"]
    stats = tmp_path / "stats.npz"
    assert run(["calibrate", *common, "-o", stats, "-q"]).exit_code == 0
    refused = run(["compress", *common, "--no-score-positions", "--stats", stats, "--target-flops", "0.5",
                   "-o", tmp_path / "x.onnx"])
    assert refused.exit_code != 0 and "score-guided positions on 9 layer(s); this run guides 0" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "x.onnx").exists()
    result = run(["compress", *common, "--stats", stats, "--target-flops", "0.5", "-o", tmp_path / "y.onnx",
                  "--report", tmp_path / "r.json"])
    assert result.exit_code == 0, result.output
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("9 layer(s) of 3 score head(s)" in n and "/detect/cv3.0/cv3.0.2/Conv_output_0" in n for n in notes)


def test_analyze_shows_the_guided_layers(tmp_path):
    result = run(["analyze", YOLO, "--shape", "images:1x3x320x320", "--json", tmp_path / "a.json"])
    assert result.exit_code == 0, result.output
    assert "9 layer(s) of 3 detection score head(s)" in result.output
    assert "guided:   /detect/cv3.0/cv3.0.1/conv/Conv (by /detect/cv3.0/cv3.0.2/Conv_output_0)" in result.output
    groups = json.loads((tmp_path / "a.json").read_text())["groups"]
    assert sum(len(g["score_guided"]) for g in groups) == 9


def _tiny_head(flatten: bool):
    """x → Conv 3x3 (8) → Relu → Conv 3x3 (8) → Relu → Conv 1x1 (3 scores) → Sigmoid → output: YOLOX-like when the
    scores are flattened into a list of candidates after the Sigmoid, a dense map when they are not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 4, 3, 3)), ("w2", (8, 8, 3, 3)), ("w3", (3, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["scores"], name="score"),
             helper.make_node("Sigmoid", ["scores"], ["p" if flatten else "y"], name="sigmoid")]
    out_shape = [1, 3, 64] if flatten else [1, 3, 8, 8]
    if flatten:
        inits.append(numpy_helper.from_array(np.array([1, 3, 64], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["y"], name="flatten"))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("flatten", [True, False], ids=["candidates", "dense-map"])
def test_a_sigmoid_before_the_flattening_still_scores_candidates(flatten):
    from onnxprune.graph.normalise import normalise, static_shapes

    model = normalise(_tiny_head(flatten))
    analysis = find_groups(model, static_shapes(model))
    guides = score_guides(model, analysis, analysis.consumers)
    assert guides == ({"conv2": "scores", "score": "scores"} if flatten else {}), guides
