"""Graphs in the style of other exporters (sample_models/exporter_patterns.py: tf2onnx NHWC, Caffe2, CNTK).

Keep-all reproduces the outputs; 60 % of the multiply-adds gives a valid, smaller model with the same
signature; what cannot be proven safe is named in the report's ``blocked`` list and left unpruned.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxprune.cli.main import cli
from onnxprune.compress import CompressOptions, compress
from onnxprune.graph.io import load_model
from onnxprune.metrics import count_model
from onnxprune.plan import Target

from conftest import random_feed, relative_error, run_model, write_calibration
from test_zoo import FAST, _compress_oracle, _duplicated_conv, _model, _signature

from exporter_patterns import MODELS  # sample_models is not a package

SOFTMAX = ("Softmax", "normalises across the channel axis")  # the classifier's output, frozen anyway
# (op, words of the reason) that each graph must block; nothing else may block.
BLOCKED = {
    "tf_nhwc_chain": {SOFTMAX},
    "tf_nhwc_residual": {SOFTMAX},
    "caffe2_resnet": {SOFTMAX, ("LRN", "local response normalisation")},
    "cntk_pad_times": set(),
}
# Channels the analysis cannot prove safe: (producer kept whole, the node that blocks it, its op).
KEPT = {"caffe2_resnet": [("conv1", "pool1_norm", "LRN")]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every exporter-pattern model and 40 random calibration samples for it, as (model, data) paths."""
    folder = tmp_path_factory.mktemp("exporters")
    out = {}
    for name, build in MODELS.items():
        path = folder / f"{name}.onnx"
        onnx.save(build(), path)
        out[name] = path, write_calibration(path, folder, n=40)
    return out


def test_models_are_valid_and_in_the_exporters_style():
    ops = {}
    for name, build in MODELS.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        ops[name] = {n.op_type for n in model.graph.node}
    assert {"Transpose", "Identity", "MatMul", "Softmax"} <= ops["tf_nhwc_chain"]
    assert {"Sum", "LRN", "Concat", "Dropout", "Gemm"} <= ops["caffe2_resnet"]
    assert {"Pad", "MatMul", "Reshape"} <= ops["cntk_pad_times"] and "Gemm" not in ops["cntk_pad_times"]
    nhwc = MODELS["tf_nhwc_chain"]().graph.input[0].type.tensor_type.shape.dim
    assert nhwc[0].dim_param and nhwc[3].dim_value == 3
    assert [MODELS[n]().opset_import[0].version for n in ("caffe2_resnet", "cntk_pad_times")] == [8, 8]


@pytest.mark.parametrize("name", MODELS)
def test_keep_all_reproduces_outputs(built, name: str):
    path, data = built[name]
    result = compress(path, data, CompressOptions(target=Target("flops", 1.0), num_samples=8, holdout=0.0))
    feed = random_feed(path, 5, seed=1)
    for a, b in zip(run_model(load_model(path), feed), run_model(result.model, feed)):
        assert relative_error(a, b) < 1e-4
    assert _signature(result.model) == _signature(load_model(path))


@pytest.mark.parametrize("name", MODELS)
def test_sixty_percent_flops_gives_valid_smaller_model(built, name: str):
    path, data = built[name]
    result = compress(path, data, CompressOptions(target=Target("flops", 0.6), holdout=0.2, calibration=FAST))
    pruned, original = result.model, load_model(path)
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(pruned) == _signature(original)
    feed = random_feed(path, 3, seed=2)
    outs = run_model(pruned, feed)
    assert [o.shape for o in outs] == [o.shape for o in run_model(original, feed)]
    assert all(np.isfinite(o).all() for o in outs)
    assert count_model(pruned).flops <= 0.6 * count_model(original).flops
    blocked = {(op, reason) for _, op, reason in result.report.blocked}
    assert {op for op, _ in blocked} == {op for op, _ in BLOCKED[name]}, blocked
    for op, words in BLOCKED[name]:
        assert any(o == op and words in r for o, r in blocked), (op, words, blocked)
    groups = {g.name: g for g in result.report.groups}
    for producer, node, op in KEPT.get(name, []):
        assert (node, op) in {(n, o) for n, o, _ in result.report.blocked}
        assert groups[producer].after == groups[producer].before


@pytest.mark.parametrize("flatten", ["Reshape", "Flatten"])
def test_channel_last_flatten_refit_is_exact(tmp_path, flatten: str):
    """Transpose to NHWC, flatten, MatMul: channel c owns every C-th column, so redundant channels re-fit exactly."""
    rng = np.random.default_rng(0)
    inits = {"w1": _duplicated_conv(rng, 3, 4), "w2": rng.standard_normal((2 * 2 * 8, 4))}
    if flatten == "Reshape":
        inits["shape"] = np.array([-1, 2 * 2 * 8], np.int64)
        flat = helper.make_node("Reshape", ["nhwc", "shape"], ["flat"])
    else:
        flat = helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1)
    model = _model(
        [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4, strides=[4, 4]),   # 8 x 2 x 2
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Transpose", ["r1"], ["nhwc"], perm=[0, 2, 3, 1]),
         flat,
         helper.make_node("MatMul", ["flat", "w2"], ["out"])],
        inits, [("input", ["N", 3, 8, 8])], [("out", ["N", 4])], opset=13)
    result, before, after = _compress_oracle(model, tmp_path, 0.5)
    inits = {i.name: i for i in result.model.graph.initializer}
    matmul = next(n for n in result.model.graph.node if n.op_type == "MatMul")
    assert tuple(inits[matmul.input[1]].dims) == (2 * 2 * 4, 4)   # every position lost the same 4 channels
    assert relative_error(before, after) < 1e-3


def test_cli_compresses_nhwc_export(built, tmp_path):
    path, data = built["tf_nhwc_chain"]
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["compress", str(path), "--data", str(data), "--target-flops", "0.6",
                                      "--holdout", "0.2", "-o", str(out), "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(out), full_check=True)
    doc = json.loads(report.read_text())
    assert doc["flops"]["after"] <= 0.6 * doc["flops"]["before"]
    assert [b["op"] for b in doc["blocked"]] == ["Softmax"]
