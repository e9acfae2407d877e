"""--distil: the torch interpreter of ONNX graphs and the tuning of pruned weights toward the original's outputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CHAIN_MODELS, SAMPLES, random_feed, real_inputs, relative_error, run_cli, run_model, write_calibration

import onnxprune.compress as compress_module
from onnxprune.distil import DistilOutcome, with_initializers

ZOO = sorted((SAMPLES / "zoo").glob("*.onnx")) + sorted((SAMPLES / "lookalikes").glob("*.onnx"))
LOOKALIKE_HW = {"yolov8_like": (320, 320), "ppocr_det_like": (320, 480), "ppocr_rec_like": (48, 320),
                "ppocr_cls_like": (48, 192)}   # a size each lookalike runs at (its calibration images')


def _feed(path: Path, n: int) -> dict[str, np.ndarray]:
    """Random samples at a size the model runs at."""
    hw = LOOKALIKE_HW.get(path.name.split(".")[0])
    if hw is None:
        return random_feed(path, n)
    name = real_inputs(onnx.load(str(path), load_external_data=False))[0].name
    return {name: np.random.default_rng(0).standard_normal((n, 3, *hw)).astype(np.float32)}


@pytest.fixture
def without_torch(monkeypatch):
    """``import torch`` fails, as where torch is not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_distil_without_torch_is_one_line_error(tmp_path, without_torch, monkeypatch):
    model = SAMPLES / "chains" / "a_conv_bn_gap.onnx"
    calib = write_calibration(model, tmp_path)
    out = tmp_path / "p.onnx"

    def calibrating(*args, **kwargs):
        raise AssertionError("calibrated before saying that --distil cannot run")

    monkeypatch.setattr(compress_module, "first_pass", calibrating)   # said before any pass over the data
    result = run_cli(["compress", model, "--data", calib, "--target-flops", "0.5", "--distil", "2", "-o", out, "-q"])
    assert result.exit_code == 4, result.output
    assert "--distil needs torch" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_outcome_line_says_whether_it_was_kept():
    kept = DistilOutcome(3, 30, 16, "cpu", 0.5, 0.2, True).describe()
    dropped = DistilOutcome(3, 30, 16, "cpu", 0.5, 0.7, False).describe()
    unchecked = DistilOutcome(3, 30, 16, "cpu", None, None, True).describe()
    assert "0.5 -> 0.2" in kept and "not kept" not in kept
    assert "not kept" in dropped
    assert "no held-out samples" in unchecked


def test_with_initializers_replaces_values_only():
    model = onnx.load(str(SAMPLES / "chains" / "a_conv_bn_gap.onnx"))
    name = model.graph.initializer[0].name
    new = np.full(onnx.numpy_helper.to_array(model.graph.initializer[0]).shape, 0.25, np.float32)
    out = with_initializers(model, {name: new})
    assert np.array_equal(onnx.numpy_helper.to_array(out.graph.initializer[0]), new)
    assert [n.name for n in out.graph.initializer] == [n.name for n in model.graph.initializer]
    assert not np.array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), new)  # a copy


@pytest.mark.parametrize("path", CHAIN_MODELS + ZOO, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_torch_graph_reproduces_onnxruntime(path):
    torch = pytest.importorskip("torch")
    from onnxprune.graph.normalise import normalise
    from onnxprune.graph.precision import to_float32
    from onnxprune.torch_graph import TorchGraph, unsupported

    from onnxprune.runtime import fixed_batch

    model = to_float32(normalise(onnx.load(str(path))))
    assert unsupported(model) == []
    feed = _feed(path, fixed_batch(model) or 2)
    expected = run_model(model, feed)
    with torch.no_grad():
        got = TorchGraph(model)({k: torch.from_numpy(v) for k, v in feed.items()})
    for a, b in zip(expected, got):
        assert a.shape == tuple(b.shape)
        assert relative_error(a, b.numpy()) < 1e-4


def test_unsupported_operator_is_named():
    pytest.importorskip("torch")
    from onnxprune.distil import check_distillable
    from onnxprune.errors import UsageError

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Einsum", ["x"], ["y"], equation="ij->ij")], "g", [x], [y])
    with pytest.raises(UsageError, match="Einsum"):
        check_distillable(onnx.helper.make_model(graph))


def _compress(model: Path, calib: Path, out: Path, *extra) -> dict:
    import json

    report = out.with_suffix(".json")
    result = run_cli(["compress", model, "--data", calib, "--target-flops", "0.5", "-o", out, "-q", "--report", report,
                      *extra])
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def test_distil_brings_pruned_outputs_closer(tmp_path):
    pytest.importorskip("torch")
    model = SAMPLES / "zoo" / "resnet_basic.ts.onnx"
    calib = write_calibration(model, tmp_path, n=96)
    plain = _compress(model, calib, tmp_path / "plain.onnx", "--holdout", "0.25")
    tuned = _compress(model, calib, tmp_path / "tuned.onnx", "--holdout", "0.25", "--distil", "8", "--distil-lr", "1e-3")
    line = next(n for n in tuned["notes"] if n.startswith("distilled"))
    assert "distil" in tuned["timings"]
    feed = random_feed(model, 32, seed=7)
    original = run_model(onnx.load(str(model)), feed)[0]
    errors = {name: relative_error(original, run_model(onnx.load(str(tmp_path / f"{name}.onnx")), feed)[0])
              for name in ("plain", "tuned")}
    if "not kept" in line:   # the check on held-out samples refused it: the re-fitted weights stand
        assert errors["tuned"] == errors["plain"]
    else:
        assert errors["tuned"] < errors["plain"]
    pruned = onnx.load(str(tmp_path / "tuned.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.name for o in pruned.graph.output] == [o.name for o in onnx.load(str(model)).graph.output]
    assert [n.op_type for n in pruned.graph.node] == [n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node]
    assert plain["flops"] == tuned["flops"]


def test_distil_skipped_when_every_channel_is_kept(tmp_path):
    pytest.importorskip("torch")
    model = SAMPLES / "chains" / "a_conv_bn_gap.onnx"
    calib = write_calibration(model, tmp_path)
    report = _compress(model, calib, tmp_path / "keep.onnx", "--distil", "2", "--target-flops", "1.0")
    assert not any(n.startswith("distilled") for n in report["notes"])
    feed = random_feed(model, 4)
    assert relative_error(run_model(onnx.load(str(model)), feed)[0],
                          run_model(onnx.load(str(tmp_path / "keep.onnx")), feed)[0]) < 1e-5


def _fake_distil(monkeypatch) -> list:
    """compress's distillation replaced by one that records the pruned models it is given and changes nothing."""

    calls = []

    def fake(teacher, student, data, calib_idx, hold_idx, settings, provider="cpu", progress=None):
        calls.append(sum(onnx.numpy_helper.to_array(i).size for i in student.graph.initializer))
        return student, DistilOutcome(settings.epochs, 1, 1, "cpu", float(len(calls)), 0.5, True)  # before: call number

    monkeypatch.setattr(compress_module, "distil", fake)
    monkeypatch.setattr(compress_module, "check_distillable", lambda model: None)
    return calls


def test_a_latency_target_distils_only_the_pruning_it_keeps(tmp_path, monkeypatch):
    from test_latency import _latency_run

    from onnxprune.latency import LatencyCheck

    calls = _fake_distil(monkeypatch)
    measured = iter([0.95, 0.5, 0.79])   # three prunings: a miss, far below, close below (kept)
    monkeypatch.setattr(compress_module, "check_latency",
                        lambda *a, **kw: (lambda r: LatencyCheck(10.0, 10.0 * r, r, 0.01))(next(measured)))
    _, doc = _latency_run(tmp_path, monkeypatch, "--distil", 3)
    assert doc["latency"]["measured_ratio"] == 0.79
    assert len(calls) == 1
    kept = onnx.load(str(tmp_path / "p.onnx"))
    assert calls[0] == sum(onnx.numpy_helper.to_array(i).size for i in kept.graph.initializer)
    assert sum(n.startswith("distilled toward the original's outputs: 3 epoch(s)") for n in doc["notes"]) == 1


def test_a_flops_target_distils_once(tmp_path, monkeypatch):
    calls = _fake_distil(monkeypatch)
    model = SAMPLES / "zoo" / "resnet_basic.ts.onnx"
    doc = _compress(model, write_calibration(model, tmp_path), tmp_path / "p.onnx", "--distil", 2)
    assert len(calls) == 1 and "distil" in doc["timings"]


def test_a_fidelity_search_reports_the_distillation_of_the_pruning_it_keeps(tmp_path, monkeypatch):
    calls = _fake_distil(monkeypatch)
    report = tmp_path / "r.json"
    result = run_cli(["compress", SAMPLES / "lenet5_digits.onnx", "--data", SAMPLES / "digits_calib.npz",
                      "--target-fidelity", "0.97", "--holdout", "0.3",
                      "--distil", 2, "-o", tmp_path / "p.onnx", "-q", "--report", report])
    assert result.exit_code == 0, result.output
    kept = sum(onnx.numpy_helper.to_array(i).size for i in onnx.load(str(tmp_path / "p.onnx")).graph.initializer)
    assert len(calls) > 1 and calls.count(kept) == 1
    import json

    notes = [n for n in json.loads(report.read_text())["notes"] if n.startswith("distilled")]
    assert notes == [next(n for n in notes)] and f"held-out output loss {calls.index(kept) + 1:.4g} ->" in notes[0]
