"""End to end on every chain topology: keep-all is exact, a FLOPs target is met, the output is valid."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune.compress import CompressOptions, compress
from onnxprune.errors import UsageError
from onnxprune.graph.io import load_model
from onnxprune.metrics import count_model
from onnxprune.plan import SolverSettings, Target
from onnxprune.report import render_summary

from conftest import SAMPLES, random_feed, real_inputs, relative_error, run_model, write_calibration


def _signature(model: onnx.ModelProto):
    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return ([(i.name, i.type.tensor_type.elem_type, dims(i)) for i in real_inputs(model)],
            [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output])


def test_keep_all_reproduces_outputs(chain_model, tmp_path):
    data = write_calibration(chain_model, tmp_path)
    out = tmp_path / "keep.onnx"
    result = compress(chain_model, data, CompressOptions(target=Target("params", 1.0)), output=out)
    feed = random_feed(chain_model, 6, seed=1)
    original = load_model(chain_model)
    pruned = load_model(out)
    for a, b in zip(run_model(original, feed), run_model(pruned, feed)):
        assert relative_error(a, b) < 1e-5
    assert result.report.params[0] == result.report.params[1]


def test_flops_target_gives_valid_smaller_model(chain_model, tmp_path):
    data = write_calibration(chain_model, tmp_path, n=64)
    out = tmp_path / "half.onnx"
    try:
        result = compress(chain_model, data, CompressOptions(target=Target("flops", 0.5), holdout=0.25), output=out)
    except UsageError as exc:  # only where frozen groups make the target unreachable, and it says so
        assert "cannot be reached" in exc.message
        assert chain_model.stem.startswith("h_")
        assert not out.exists()
        return
    original, pruned = load_model(chain_model), load_model(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(original) == _signature(pruned)
    assert [(o.domain, o.version) for o in original.opset_import] == [(o.domain, o.version) for o in pruned.opset_import]
    achieved = count_model(pruned).flops / count_model(original).flops
    assert 0.48 <= achieved <= 0.5 + 1e-9
    assert result.report.flops[1] == count_model(pruned).flops
    outs = run_model(pruned, random_feed(chain_model, 3))
    assert all(np.isfinite(o).all() for o in outs)
    assert result.report.fidelity is not None and result.report.fidelity.samples == 16


def test_params_target_within_two_percent(tmp_path):
    model = SAMPLES / "lenet5_digits.onnx"
    out = tmp_path / "p.onnx"
    result = compress(model, SAMPLES / "digits_calib.npz", CompressOptions(target=Target("params", 0.3)), output=out)
    assert 0.28 <= result.report.achieved("params") <= 0.3
    assert min(g.after for g in result.report.groups) >= 1


def test_threshold_mode_without_target(tmp_path):
    model = SAMPLES / "lenet5_digits.onnx"
    result = compress(model, SAMPLES / "digits_calib.npz", CompressOptions(solver=SolverSettings(rho=1.0)),
                      output=tmp_path / "t.onnx")
    assert all(g.after >= 1 for g in result.report.groups)
    onnx.checker.check_model(load_model(tmp_path / "t.onnx"), full_check=True)


def test_graph_output_channels_are_never_pruned(tmp_path):
    model = SAMPLES / "chains" / "h_blocked.onnx"
    data = write_calibration(model, tmp_path)
    result = compress(model, data, CompressOptions(target=Target("flops", 0.9)), output=tmp_path / "h.onnx")
    pruned = load_model(tmp_path / "h.onnx")
    assert _signature(load_model(model)) == _signature(pruned)
    blocked = {(n, op) for n, op, _ in result.report.blocked}
    assert any(op == "Softmax" for _, op in blocked) and any(op == "Reshape" for _, op in blocked)


def test_labels_give_accuracy_and_report_keys(tmp_path):
    model = SAMPLES / "lenet5_digits.onnx"
    result = compress(model, SAMPLES / "digits_calib.npz", CompressOptions(target=Target("flops", 0.5), holdout=0.3),
                      output=tmp_path / "l.onnx")
    fid = result.report.fidelity
    assert fid.accuracy_before is not None and fid.accuracy_before > 0.9
    assert fid.accuracy_after > 0.85 and fid.top1_agreement > 0.85
    doc = json.loads(json.dumps(result.report.to_dict()))
    for key in ("params", "flops", "groups", "fidelity", "timings"):
        assert key in doc
    assert {"before", "after"} <= set(doc["params"]) and {"before", "after"} <= set(doc["flops"])
    assert isinstance(doc["groups"], list) and doc["groups"][0]["before"] >= doc["groups"][0]["after"]
    text = render_summary(result.report)
    assert "multiply-adds" in text and "accuracy" in text


def test_independent_and_baselines_run(tmp_path):
    model = SAMPLES / "lenet5_digits.onnx"
    for method in ("l1", "l2", "random", "activation"):
        opts = CompressOptions(target=Target("flops", 0.6), solver=SolverSettings(method=method), independent=True)
        result = compress(model, SAMPLES / "digits_calib.npz", opts, output=tmp_path / f"{method}.onnx")
        assert result.report.achieved("flops") <= 0.6
    with pytest.raises(UsageError, match="needs a target"):
        compress(model, SAMPLES / "digits_calib.npz", CompressOptions(solver=SolverSettings(method="l1")))


def test_symbolic_output_dims_that_inference_resolves_stay_symbolic(tmp_path):
    """An export may name a dim (``C``) that shape inference can compute: the pruned model still declares it by name."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.random((8, 3, 3, 3), dtype=np.float32), "w"),
               numpy_helper.from_array(rng.random((4, 8, 1, 1), dtype=np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"])], weights)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.random((16, 3, 12, 12), dtype=np.float32))
    result = compress(path, data, CompressOptions(target=Target("flops", 0.5)), output=tmp_path / "out.onnx")
    dims = [d.dim_param or d.dim_value for d in result.model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", "C", "H", "W"] and result.report.achieved("flops") < 0.75


def test_a_wide_layer_on_small_maps_is_re_fitted_when_one_fold_is_held_as_rows(tmp_path):
    """2 304 columns on 2×2 maps from 180 calibration samples: the error-correcting fold of the odd samples (360 rows
    ≤ p/4) is held as rows, the other is a Gram matrix; the re-fit validates its ridge on both (VGG-16 for CIFAR
    stopped here with a broadcast error) and the pruned model runs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal((256, 256, 3, 3)) / 48).astype(np.float32), f"w{i}")
               for i in (1, 2)]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", **conv), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", **conv)], "wide_small_maps",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256, 2, 2])], weights)
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    data = tmp_path / "wide.npz"
    np.savez(data, x=rng.standard_normal((200, 256, 2, 2)).astype(np.float32))
    options = CompressOptions(target=Target("flops", 0.95), solver=SolverSettings(method="l1"))
    result = compress(path, data, options, output=tmp_path / "wide.pruned.onnx")
    kept = [g.after for g in result.report.groups if g.name == "conv1"]
    assert kept and 2048 <= 9 * kept[0] < 9 * 256         # the wide validation, with channels removed
    pruned = load_model(tmp_path / "wide.pruned.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    feed = {"x": rng.standard_normal((4, 256, 2, 2)).astype(np.float32)}
    assert relative_error(run_model(pruned, feed)[0], run_model(path, feed)[0]) < 0.5
