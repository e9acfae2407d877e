"""Depth pruning: which residual branches may go whole, the graph without them, and the allocation's choice."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from cli.main import cli
from onnxprune.allocate import GroupCurve, allocate, minimum_cost
from onnxprune.analysis import find_groups
from onnxprune.costs import CostModel
from onnxprune.depth import bypassed, removable_groups, vanished
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise
from onnxprune.inspect import analyze_model, render_groups
from onnxprune.metrics import count_model
from onnxprune.latency import LatencyTable
from onnxprune.plan import AllocationSettings, LatencyBudget, PrunePlan
from onnxprune.rewrite import apply_plan

from conftest import SAMPLES, real_inputs, run_model

ZOO = SAMPLES / "zoo"
# removable branches per zoo architecture (both exporters): basic blocks and inverted residuals only
REMOVABLE = {"resnet_basic": 3, "mobilenet_v2": 2}


def _load(arch: str, exporter: str = "ts"):
    model = normalise(load_model(ZOO / f"{arch}.{exporter}.onnx"))
    return model, find_groups(model)


def _feed(arch: str, n: int = 4) -> dict[str, np.ndarray]:
    with np.load(ZOO / f"{arch}.npz") as data:
        return {k: data[k][:n] for k in data.files}


@pytest.mark.parametrize("path", sorted(ZOO.glob("*.onnx")), ids=lambda p: p.name)
def test_only_residual_branches_are_removable(path):
    """A plain chain, a bottleneck's middle (it would strand the first conv), a Concat or an SE branch never is."""
    model = normalise(load_model(path))
    analysis = find_groups(model)
    removable = removable_groups(model, analysis)
    assert len(removable) == REMOVABLE.get(path.name.split(".")[0], 0)
    adds = {n.output[0] for n in model.graph.node if n.op_type == "Add"}
    readers = {t: [n for n in model.graph.node if t in n.input] for n in model.graph.node for t in n.output}
    for g in (analysis.groups[i] for i in removable):
        for c in g.consumers:   # each last layer writes only into a residual Add
            assert [r.output[0] for r in readers[c.output]] and all(r.output[0] in adds for r in readers[c.output])


def _zeroed_branch(model: onnx.ModelProto, consumers) -> onnx.ModelProto:
    """The model with these consumers' weights and biases set to zero: what a removed branch adds to its sum."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in model.graph.node}
    names = {c.weight for c in consumers} | {nodes[c.node].input[2] for c in consumers if len(nodes[c.node].input) > 2}
    for init in out.graph.initializer:
        if init.name in names:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    return out


@pytest.mark.parametrize("arch", sorted(REMOVABLE))
def test_removed_branch_leaves_a_valid_graph_that_passes_the_shortcut_on(arch):
    """The branch's nodes, its residual Add and a ReLU after it on a rectified shortcut are gone; between re-fit
    stages (``shapes=False``) the Add and that ReLU stay as Identities, so every remaining tensor keeps its name."""
    model, analysis = _load(arch)
    group = analysis.groups[min(removable_groups(model, analysis))]
    kept = np.ones(analysis.n_classes, dtype=bool)
    kept[group.classes] = False
    pruned = apply_plan(model, analysis, PrunePlan(kept, {}, []))
    onnx.checker.check_model(pruned, full_check=True)
    names = {n.name for n in pruned.graph.node}
    assert not names & {*group.producers, *(c.node for c in group.consumers)}
    ops = [n.op_type for n in pruned.graph.node]
    assert "Identity" not in ops and ops.count("Add") == [n.op_type for n in model.graph.node].count("Add") - 1
    staged = apply_plan(model, analysis, PrunePlan(kept, {}, []), shapes=False)
    assert sum(n.op_type == "Identity" for n in staged.graph.node) == {"resnet_basic": 2, "mobilenet_v2": 1}[arch]
    assert {t for n in staged.graph.node for t in n.output} <= {t for n in model.graph.node for t in n.output}
    assert vanished(analysis, kept) >= {c.node for c in group.consumers}
    assert [i.name for i in real_inputs(pruned)] == [i.name for i in real_inputs(model)]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    assert count_model(pruned).flops < count_model(model).flops
    feed = _feed(arch)
    expected = run_model(_zeroed_branch(model, bypassed(analysis, kept)), feed)
    got = run_model(pruned, feed)
    for e, g, s in zip(expected, got, run_model(staged, feed)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s, e, rtol=1e-4, atol=1e-5)


def test_allocation_removes_a_branch_whole_when_that_costs_least():
    """A branch whose error only drops once most of it is kept goes whole; thinning it would cost as much error."""
    model, analysis = _load("resnet_basic")
    cost = CostModel(model, analysis, count_model(model), "flops")
    groups = [g for g in analysis.groups if g.prunable]
    removable = removable_groups(model, analysis)
    branch = next(g for g in groups if g.id in removable)

    def curve(g, removable_ids):
        errors = np.linspace(1.0, 0.0, g.size + 1)
        if g is branch:   # any cut costs the whole branch's error, but nothing is lost at no channel either
            errors = np.full(g.size + 1, 0.05)
            errors[-1] = 0.0
        return GroupCurve(g.classes, errors, 1, removable=g.id in removable_ids)

    budget = 0.8 * cost.before
    kept = allocate([curve(g, removable) for g in groups], cost, budget, analysis.n_classes)
    assert not kept[branch.classes].any() and cost.evaluate(kept) <= budget
    kept = allocate([curve(g, set()) for g in groups], cost, budget, analysis.n_classes)
    assert kept[branch.classes].sum() >= 1   # --no-depth: never below one channel
    low = minimum_cost([curve(g, removable) for g in groups], cost, analysis.n_classes)
    assert low < minimum_cost([curve(g, set()) for g in groups], cost, analysis.n_classes)


def test_a_branch_left_near_empty_in_the_blocked_layout_goes_whole_and_its_cost_is_spent_elsewhere():
    """With counts below the channel block allowed (--allow-below, the CPU default) a removable branch that the
    allocation leaves with fewer than a quarter of its block goes whole, and the allocation runs again without it;
    without that setting it keeps its two channels."""
    model, analysis = _load("resnet_basic")
    cost = CostModel(model, analysis, count_model(model), "flops")
    groups = [g for g in analysis.groups if g.prunable]
    removable = removable_groups(model, analysis)
    branch = next(g for g in groups if g.id in removable and g.size >= 8)

    def curve(g, fine_below):
        if g is not branch:
            return GroupCurve(g.classes, np.linspace(1.0, 0.0, g.size + 1), 1)
        errors = np.zeros(g.size + 1)
        errors[:2] = 1.0, 0.9   # its first two channels carry it all; the rest cost nothing
        return GroupCurve(g.classes, errors, 1, step=max(fine_below, 1), fine_below=fine_below, removable=True)

    budget = 0.5 * cost.before
    exact = allocate([curve(g, 0) for g in groups], cost, budget, analysis.n_classes)
    blocked = allocate([curve(g, branch.size) for g in groups], cost, budget, analysis.n_classes)
    assert exact[branch.classes].sum() == 2 and not blocked[branch.classes].any()
    assert cost.evaluate(blocked) <= budget and cost.evaluate(exact) <= budget
    others = np.concatenate([g.classes for g in groups if g is not branch])
    assert blocked[others].sum() > exact[others].sum()


def test_compress_removes_branches_and_reports_them(tmp_path):
    """MobileNetV2 at 15 % of its multiply-adds with --depth (the default) removes both inverted residuals (also
    layer by layer); --no-depth keeps every branch. The squared residual gain (by default only
    for rectified sums; these are linear) prices the branches low enough that both go."""
    model, data = ZOO / "mobilenet_v2.ts.onnx", ZOO / "mobilenet_v2.npz"
    runner = CliRunner()
    reports = {}
    for flags in (("--depth",), ("--no-depth",), ("--independent",)):
        out, report = tmp_path / f"out{len(reports)}.onnx", tmp_path / f"r{len(reports)}.json"
        result = runner.invoke(cli, ["compress", str(model), "--data", str(data), "--target-flops", "0.15",
                                     "--residual-power", "2", "-o", str(out), "--report", str(report), *flags])
        assert result.exit_code == 0, result.output
        reports[flags] = (json.loads(report.read_text()), result.output, onnx.load(str(out)))
        onnx.checker.check_model(reports[flags][2], full_check=True)
    feed = _feed("mobilenet_v2")
    for flags in (("--depth",), ("--independent",)):
        removed, output, pruned = reports[flags]
        assert len(removed["removed_blocks"]) == 2 and "removed 2 residual branch(es) whole" in output
        assert all(b["layers"] and b["channels"] > 0 for b in removed["removed_blocks"])
        assert not {n for b in removed["removed_blocks"] for n in b["layers"]} & {n.name for n in pruned.graph.node}
        assert all(np.isfinite(o).all() for o in run_model(pruned, feed))
    kept, output, _ = reports[("--no-depth",)]
    assert kept["removed_blocks"] == [] and "residual branch" not in output
    assert min(g["after"] for g in kept["groups"]) >= 1


def test_branches_may_go_by_default_and_no_depth_keeps_them():
    model, analysis = _load("resnet_basic")
    budget = LatencyBudget(0.5, LatencyTable("cpu", 1, 1.0, {}))
    assert AllocationSettings().removable(model, analysis) == removable_groups(model, analysis)
    assert AllocationSettings(latency=budget).removable(model, analysis) == removable_groups(model, analysis)
    assert AllocationSettings(depth=True).removes_branches
    assert not AllocationSettings(depth=False).removable(model, analysis)
    assert not AllocationSettings(depth=False, latency=budget).removes_branches


def test_analyze_marks_removable_branches():
    summary = analyze_model(ZOO / "resnet_basic.ts.onnx")
    assert sum(g["removable_branch"] for g in summary["groups"]) == REMOVABLE["resnet_basic"]
    text = render_groups(summary)
    assert "3 of them residual branches that can be removed whole" in text and text.count(" branch ") == 3


def test_a_block_with_a_projection_shortcut_can_go(tmp_path):
    """The shortcut's re-fit no longer targets the sum minus a branch that is gone."""
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["compress", str(ZOO / "resnet_basic.ts.onnx"), "--data",
                                      str(ZOO / "resnet_basic.npz"), "--target-flops", "0.1", "--depth",
                                      "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    removed = {b["group"] for b in json.loads(report.read_text())["removed_blocks"]}
    assert "/2/body/body.0/body.0.0/Conv" in removed   # block 2 has a 1x1 projection shortcut
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    assert "/2/short/short.0/Conv" in {n.name for n in pruned.graph.node}
    assert all(np.isfinite(o).all() for o in run_model(pruned, _feed("resnet_basic")))


def _two_branch_sum(shortcut: bool) -> onnx.ModelProto:
    """x → conv0 → Relu → (convA + convB) [+ x] → Relu → GAP → Gemm: convA and convB read the same inner channels."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    inits = [w("w0", 8, 4, 3, 3), w("wa", 4, 8, 3, 3), w("wb", 4, 8, 1, 1), w("fc", 3, 4)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], "conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h0"], ["r0"], "relu0"),
             helper.make_node("Conv", ["r0", "wa"], ["a"], "convA", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["r0", "wb"], ["b"], "convB"),
             helper.make_node("Add", ["a", "b"], ["s"], "add")]
    last = "s"
    if shortcut:
        nodes.append(helper.make_node("Add", ["s", "x"], ["t"], "add2"))
        last = "t"
    nodes += [helper.make_node("Relu", [last], ["r1"], "relu1"),
              helper.make_node("GlobalAveragePool", ["r1"], ["p"], "gap"),
              helper.make_node("Flatten", ["p"], ["f"], "flat"),
              helper.make_node("Gemm", ["f", "fc"], ["y"], "fc", transB=1)]
    graph = helper.make_graph(nodes, "two_branch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_sum_of_two_layers_of_one_group_is_no_removable_branch():
    """Both inputs of the Add come from the inner group's own consumers: removing it would leave no shortcut to pass
    on, so it is not a branch (a block of two such layers whose sum has a shortcut is not one either: the
    landing's other input is the branch's own layer)."""
    for shortcut in (False, True):
        model = normalise(_two_branch_sum(shortcut))
        onnx.checker.check_model(model, full_check=True)
        analysis = find_groups(model)
        inner = next(g for g in analysis.groups if g.prunable and "conv0" in g.producers)
        assert {c.node for c in inner.consumers} == {"convA", "convB"}
        assert inner.id not in removable_groups(model, analysis)
