"""The CPU default of --round-to: counts onnxruntime's blocked convolutions like, and a FLOPs target's cuts ranked
by the multiply-adds those kernels execute (compress.backend_counts, costs.CostModel(block=…), allocate.Steered)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.allocate import GroupCurve, Steered, allocate
from onnxprune.analysis import find_groups
from onnxprune.bench.profile import cpu_channel_block
from onnxprune.compress import backend_counts
from onnxprune.costs import CostModel
from onnxprune.errors import UsageError
from onnxprune.latency import LatencyTarget
from onnxprune.metrics import count_model
from onnxprune.plan import AllocationSettings, Target

from conftest import SAMPLES, run_cli

VGG = SAMPLES / "zoo" / "vgg_bn.ts.onnx"


def _two_convs(width: int = 32) -> onnx.ModelProto:
    """x[1,8,8,8] -> Conv(8->width) -> Relu -> Conv(width->16): one prunable group of ``width`` channels."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((width, 8, 3, 3)).astype(np.float32), "w1"),
         numpy_helper.from_array(np.zeros(width, np.float32), "b1"),
         numpy_helper.from_array(rng.standard_normal((16, width, 3, 3)).astype(np.float32), "w2"),
         numpy_helper.from_array(np.zeros(16, np.float32), "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _costs(model: onnx.ModelProto, block: int):
    analysis = find_groups(model)
    counts = count_model(model)
    group = next(g for g in analysis.groups if g.prunable)
    return analysis, group, CostModel(model, analysis, counts, "flops"), CostModel(model, analysis, counts, "flops", block)


def test_blocked_cost_pads_a_convolutions_output_channels_up_to_the_block():
    model = _two_convs(32)
    analysis, group, exact, blocked = _costs(model, 16)
    per_channel_in, per_channel_out = 8 * 9 * 64, 16 * 9 * 64   # conv1 writes one channel, conv2 reads one
    assert exact.before == blocked.before == count_model(model).flops
    # 32 -> 28 kept: conv1 still computes two 16-channel blocks; only conv2's reads shrink
    four = group.classes[:4]
    assert exact.saving(four) == pytest.approx(4 * (per_channel_in + per_channel_out))
    assert blocked.saving(four) == pytest.approx(4 * per_channel_out)
    # 32 -> 16: a whole block of conv1 goes too
    half = group.classes[:16]
    assert blocked.saving(half) == pytest.approx(exact.saving(half))
    for cls in half.tolist():
        blocked.remove(cls)
        exact.remove(cls)
    assert blocked.cost() == pytest.approx(exact.cost())
    with pytest.raises(ValueError):
        CostModel(model, analysis, count_model(model), "params", 16)


def _three_convs() -> onnx.ModelProto:
    """x[1,8,8,8] -> Conv(8->32) -> Relu -> Conv(32->32) -> Relu -> Conv(32->16): groups A (conv1's outputs) and
    B (conv2's outputs)."""
    rng = np.random.default_rng(0)
    weights = {"w1": (32, 8), "w2": (32, 32), "w3": (16, 32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["h2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((o, i, 3, 3)).astype(np.float32), n)
         for n, (o, i) in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_steered_cost_meets_the_exact_budget_and_cuts_where_the_blocked_kernels_save():
    model = _three_convs()
    analysis, counts = find_groups(model), count_model(model)
    a, b = sorted((g for g in analysis.groups if g.prunable), key=lambda g: g.producers[0])
    exact = CostModel(model, analysis, counts, "flops")
    blocked = CostModel(model, analysis, counts, "flops", 16)
    steered = Steered(exact, blocked)
    assert steered.before == exact.before
    assert steered.saving(a.classes[:1]) == pytest.approx(blocked.saving(a.classes[:1]) * exact.before / blocked.before)
    # the same error per channel in both groups: exact multiply-adds cut B first (conv2 and conv3 shrink), the
    # blocked kernels A (conv2 reads fewer channels; conv1 still computes both blocks)
    curves = [GroupCurve(g.classes, np.linspace(1.0, 0.0, g.size + 1), min_keep=1) for g in (a, b)]
    budget = 0.85 * exact.before
    by_exact = allocate(curves, exact, budget, analysis.n_classes)
    by_blocks = allocate(curves, Steered(CostModel(model, analysis, counts, "flops"), blocked), budget,
                         analysis.n_classes)
    for kept in (by_exact, by_blocks):
        assert exact.evaluate(kept) <= budget
    assert by_exact[b.classes].sum() < by_exact[a.classes].sum()
    assert by_blocks[a.classes].sum() < by_blocks[b.classes].sum()


def test_the_cpu_default_rounds_to_the_block_and_steers_flops_targets_only(monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "16")
    notes: list[str] = []
    flops = backend_counts(AllocationSettings(), "cpu", Target("flops", 0.5), None, notes)
    assert (flops.round_to, flops.allow_below, flops.block) == (16, True, 16)
    assert "multiples of 16 or fewer than 16" in notes[0] and "--round-to 1" in notes[0]
    latency = backend_counts(AllocationSettings(), "cpu", None, LatencyTarget(0.5), [])
    assert (latency.round_to, latency.allow_below, latency.block) == (16, True, 1)
    quiet: list[str] = []
    assert backend_counts(AllocationSettings(), "cpu", Target("params", 0.5), None, quiet).round_to == 1
    assert backend_counts(AllocationSettings(), "cuda", Target("flops", 0.5), None, quiet).round_to == 1
    assert backend_counts(AllocationSettings(round_to=4), "cpu", Target("flops", 0.5), None, quiet).round_to == 4
    assert not quiet
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "1")
    assert backend_counts(AllocationSettings(), "cpu", Target("flops", 0.5), None, quiet).round_to == 1
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "sixteen")
    with pytest.raises(UsageError, match="ONNXPRUNE_CPU_BLOCK"):
        cpu_channel_block()


def test_compress_on_the_cpu_keeps_block_counts_by_default_and_exact_ones_with_round_to_1(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "8")
    data = VGG.with_name("vgg_bn.npz")
    runs = {}
    for name, extra in (("default", []), ("exact", ["--round-to", "1"])):
        out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        result = run_cli(["compress", VGG, "--data", data, "--num-samples", "32", "--target-flops", "0.5",
                          "-o", out, "--report", report, *extra])
        assert result.exit_code == 0, result.output
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
        runs[name] = json.loads(report.read_text())
    default, exact = runs["default"], runs["exact"]
    assert any("multiples of 8 or fewer than 8" in n for n in default["notes"])
    assert not any("multiples of 8" in n for n in exact["notes"])
    for run in (default, exact):
        assert 0.48 <= run["flops"]["after"] / run["flops"]["before"] <= 0.5
    cut = [g for g in default["groups"] if g["after"] < g["before"]]
    assert cut and all(g["after"] % 8 == 0 or g["after"] < 8 for g in cut if g["before"] % 8 == 0)
    assert any(g["after"] % 8 and g["after"] >= 8 for g in exact["groups"] if g["before"] % 8 == 0)
