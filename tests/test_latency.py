"""--target-latency: profiler attribution, the latency table, its cost model and the allocation under two budgets."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.allocate import Budgets, GroupCurve, allocate
from onnxprune.analysis import find_groups
from onnxprune.analysis.model import ChannelGroup
from onnxprune.bench.profile import _timed_kernels, attribute, cpu_channel_block, kernel_times, profile_session
from onnxprune.bench.providers import resolve_providers
from onnxprune.costs import CostModel
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise, static_shapes
from onnxprune.latency import (LatencyCheck, LatencyCost, LatencyTable, LayerCurve, check_latency, measure_latency,
                               run_times, two_colours, uniform_mask)
from onnxprune.metrics import count_model
from onnxprune.plan import AllocationSettings

from conftest import SAMPLES, run_cli

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"
RESNET = SAMPLES / "zoo" / "resnet_basic.ts.onnx"


def _fused_model() -> onnx.ModelProto:
    """Conv -> Relu -> Add(skip) and a MatMul: the shapes onnxruntime fuses and renames."""
    w = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.ones((4, 2), np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "m"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w, m])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _event(name: str, us: float, weight=None) -> dict:
    args = {"input_type_shape": [{"float": [1, 4, 8, 8]}, {"float": list(weight)}]} if weight else {}
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": us, "ts": 0, "args": args}


def test_attribute_follows_layout_renames_fusions_and_takes_the_median():
    events = [_event("s_nchwc", 100, (4, 4, 3, 3)), _event("s_nchwc", 120, (4, 4, 3, 3)),
              _event("s_nchwc", 5000, (4, 4, 3, 3)),                      # one slow run: the median ignores it
              _event("fc/MatMulAddFusion", 30), _event("fc/MatMulAddFusion", 30), _event("fc/MatMulAddFusion", 30),
              _event("ReorderOutput", 10), _event("ReorderOutput", 10), _event("ReorderOutput", 10),
              _event("pool", 20), _event("pool", 20), _event("pool", 20)]
    times = attribute(_fused_model(), events, runs=3)
    assert times.per_node == pytest.approx({"conv": 0.12, "fc": 0.03})
    assert times.per_tensor == pytest.approx({"p": 0.02})   # the pooling, by the tensor it writes
    assert times.other == pytest.approx(0.01)                # a re-order named after no node or tensor
    assert times.total == pytest.approx(0.18)
    # a re-order whose tensor a non-compute node reads (here the residual Add) is priced by that tensor
    known = attribute(_fused_model(), events, runs=3, reorders={"ReorderOutput": "r"})
    assert known.per_node == times.per_node and known.other == 0.0
    assert known.per_tensor == pytest.approx({"p": 0.02, "r": 0.01})
    # a re-order into the blocked layout is priced by the tensor it reads, even where only compute nodes read it
    into = [{**e, "args": {"op_name": "ReorderInput"}} if e["name"].startswith("Reorder") else e for e in events]
    assert attribute(_fused_model(), into, runs=3, reorders={"ReorderOutput": "x"}).per_tensor == \
        pytest.approx({"p": 0.02, "x": 0.01})


def test_kernel_times_of_a_real_session_cover_every_layer():
    model = onnx.load(str(LENET))
    feeds = {model.graph.input[0].name: np.zeros((2, 1, 32, 32), np.float32)}
    times = kernel_times(model, feeds, resolve_providers(["cpu"])[0], threads=1, runs=3, warmup=1)
    compute = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert set(times.per_node) == compute
    assert all(v >= 0 for v in times.per_node.values())
    assert sum(times.per_node[n] for n in compute if "conv" in n) > 0  # the convolutions were found
    assert times.total >= times.other >= 0


def _lenet():
    model = normalise(load_model(LENET))
    name = model.graph.input[0].name
    return model, find_groups(model, static_shapes(model, {name: (1, 1, 32, 32)})), name


def _conv_model(cin: int, cout: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 8, 8])],
        [numpy_helper.from_array(np.ones((cout, cin, 3, 3), np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_counts_the_cpu_policy_keeps_run_as_blocked_convolutions(monkeypatch):
    monkeypatch.delenv("ONNXPRUNE_CPU_BLOCK")   # this CPU's own block
    block = cpu_channel_block()
    assert block in (1, 4, 8, 16, 32)
    if block == 1:
        pytest.skip("onnxruntime's CPU provider here has no NCHWc layout")
    cpu = resolve_providers(["cpu"])[0]
    for cin in (block - 1, 2 * block):  # fewer than one block, a multiple of it
        events, _ = profile_session(_conv_model(cin, 2 * block), {"x": np.ones((1, cin, 8, 8), np.float32)}, cpu,
                                    threads=1)
        assert any(e.get("name", "").endswith("_nchwc_kernel_time") for e in events), cin


def test_a_reorder_for_a_convolution_reading_less_than_a_block_is_part_of_its_cost(monkeypatch):
    monkeypatch.delenv("ONNXPRUNE_CPU_BLOCK")
    block = cpu_channel_block()
    if block == 1:
        pytest.skip("onnxruntime's CPU provider here has no NCHWc layout")
    thin = 3   # conv1 writes fewer channels than a block: conv2 reads them from the plain layout
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])], "thin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2 * block, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2 * block, 16, 16])],
        [numpy_helper.from_array(np.ones((thin, 2 * block, 3, 3), np.float32), "w1"),
         numpy_helper.from_array(np.ones((2 * block, thin, 3, 3), np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    events, reorders = profile_session(model, {"x": np.ones((2, 2 * block, 16, 16), np.float32)},
                                       resolve_providers(["cpu"])[0], threads=1, calls=4)
    assert "h" in reorders.values()   # conv1's output leaves the blocked layout for conv2
    kernels = _timed_kernels(events, 3)
    plain, priced = attribute(model, kernels, 3), attribute(model, kernels, 3, reorders)
    moved = priced.per_node["conv2"] - plain.per_node["conv2"]
    assert moved > 0 and priced.total == pytest.approx(plain.total)
    assert priced.per_node["conv1"] == pytest.approx(plain.per_node["conv1"])
    rest = (plain.other + sum(plain.per_tensor.values()), priced.other + sum(priced.per_tensor.values()))
    assert rest[1] == pytest.approx(rest[0] - moved)


def test_uniform_mask_keeps_a_share_of_every_prunable_group_rounded_as_the_allocation_rounds():
    _, analysis, _ = _lenet()
    rounding = AllocationSettings(round_to=4, allow_below=True)
    for share in (0.5, 0.1):
        kept = uniform_mask(analysis, share, rounding.rounded)
        for g in analysis.groups:
            k = int(kept[g.classes].sum())
            if not g.prunable:
                assert k == g.size
                continue
            want = max(int(np.ceil(share * g.size)), 1)
            if g.size % 4 == 0 and want >= 4:
                want = -(-want // 4) * 4
            assert k == max(want, int(g.frozen.sum()))


def test_allow_below_steps_by_the_multiple_then_one_channel_at_a_time():
    curve = AllocationSettings(round_to=4, allow_below=True).curve(
        _FakeGroup(12), np.arange(12), np.linspace(1.0, 0.0, 13))
    assert curve.min_keep == 1
    kept, k = [], 12
    while k > curve.min_keep:
        k = curve.after_removals(k, 1)
        kept.append(k)
    assert kept == [8, 4, 3, 2, 1]
    assert [curve.restore_unit(k) for k in (1, 3, 4, 8)] == [1, 1, 4, 4]
    plain = AllocationSettings(round_to=4).curve(_FakeGroup(12), np.arange(12), np.linspace(1.0, 0.0, 13))
    assert plain.min_keep == 4 and plain.after_removals(12, 2) == 4
    # a group a depthwise convolution reads keeps whole blocks, below one block too
    whole = AllocationSettings(round_to=4, allow_below=True, whole_blocks=frozenset({0}))
    curve = whole.curve(_FakeGroup(12), np.arange(12), np.linspace(1.0, 0.0, 13))
    assert curve.min_keep == 4 and curve.after_removals(12, 1) == 8 and curve.after_removals(12, 2) == 4
    assert [whole.rounded(_FakeGroup(12), k) for k in (1, 3, 5)] == [4, 4, 8]


def test_latency_table_factors_run_to_one_and_never_fall_with_more_channels():
    model, analysis, name = _lenet()
    feeds = {name: np.zeros((4, 1, 32, 32), np.float32)}
    table = measure_latency(model, analysis, feeds, resolve_providers(["cpu"])[0], threads=1, runs=3)
    assert table.provider == "cpu" and table.batch == 4 and table.total > 0
    assert {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")} <= set(table.layers)
    curves = [c for layer in table.layers.values() for c in [*layer.axes.values(), layer.joint] if c is not None]
    assert curves  # the lenet's middle layers lose input or output channels in the thinned copies
    # the pooling of the pruned channels: priced by the tensors it writes, which the analysis follows
    assert table.tensors and set(table.tensors) <= set(analysis.layouts)
    curves += [c for layer in table.tensors.values() for c in layer.axes.values()]
    for shares, factors in curves:
        assert shares[-1] == 1.0 and factors[-1] == 1.0 and shares[0] > 0
        assert np.all(np.diff(shares) > 0) and np.all(np.diff(factors) >= 0)
    doc = json.loads(json.dumps(table.to_dict()))
    assert doc["batch"] == 4 and set(doc["tensors"]) == set(table.tensors)


def test_two_colours_put_a_layers_input_and_output_groups_apart():
    model, analysis, _ = _lenet()
    flops = CostModel(model, analysis, count_model(model), "flops")
    first, second = two_colours(analysis, flops)
    assert not first & second and first | second == {i for i, g in enumerate(analysis.groups) if g.prunable}
    group_of = {int(c): i for i, g in enumerate(analysis.groups) if g.prunable for c in g.classes}
    for t in range(len(flops.terms)):
        sides = {}
        for cls, uses in flops.touches.items():
            for term, axis, _ in uses:
                if term == t and int(cls) in group_of:
                    sides.setdefault(axis, set()).add(group_of[int(cls)] in first)
        if len(sides) == 2:  # a chain (no odd cycle): input and output groups always in different colours
            assert sides[0] != sides[1]


def test_layer_curve_multiplies_axis_factors_and_falls_back_to_the_joint_curve():
    half = (np.array([0.5, 1.0]), np.array([0.8, 1.0]))
    layer = LayerCurve(10.0, {0: half}, joint=(np.array([0.25, 1.0]), np.array([0.5, 1.0])))
    assert layer.factor([1.0, 1.0]) == 1.0
    assert layer.factor([0.5, 1.0]) == pytest.approx(0.8)
    assert layer.factor([0.25, 1.0]) == pytest.approx(0.8)  # never below the thinnest copy measured
    assert layer.factor([0.5, 0.5]) == pytest.approx(0.5)    # axis 1 has no curve of its own: the joint one
    assert LayerCurve(10.0, {0: half}).factor([0.5, 0.5]) == pytest.approx(0.4)  # else in proportion


def _table(model, analysis, ms: dict[str, float], other: float = 1.0) -> LatencyTable:
    """Each layer's time proportional to its kept share on every axis (no measured curves)."""
    return LatencyTable("cpu", 1, sum(ms.values()) + other, {n: LayerCurve(t, {}) for n, t in ms.items()})


def test_latency_cost_prices_each_layer_at_its_share_of_multiply_adds():
    model, analysis, _ = _lenet()
    counts = count_model(model)
    layers = {n.name: 1.0 + i for i, n in enumerate(model.graph.node) if n.op_type in ("Conv", "Gemm")}
    cost = LatencyCost(model, analysis, counts, _table(model, analysis, layers))
    assert cost.cost() == pytest.approx(cost.before)
    group = next(g for g in analysis.groups if g.prunable)
    kept = np.ones(analysis.n_classes, dtype=bool)
    kept[group.classes[: group.size // 2]] = False
    flops = CostModel(model, analysis, counts, "flops")
    flops.evaluate(kept)
    expected = 1.0 + sum(layers[flops.term_nodes[t]] * np.prod(d) / np.prod(o)
                         for t, ((_, d), o) in enumerate(zip(flops.terms, flops._orig)))
    assert cost.evaluate(kept) == pytest.approx(expected)


def test_latency_cost_prices_a_tensor_at_the_share_of_its_channels_kept():
    model, analysis, _ = _lenet()
    counts = count_model(model)
    group = next(g for g in analysis.groups if g.prunable and g.size % 2 == 0)
    tensor = next(t for t in analysis.layouts if sorted(set(analysis.classes_of(t).tolist())) == sorted(group.classes))
    curve = LayerCurve(2.0, {0: (np.array([0.5, 1.0]), np.array([0.6, 1.0]))})
    # a tensor the analysis does not follow keeps its time
    table = LatencyTable("cpu", 1, 3.5, {}, tensors={tensor: curve, "elsewhere": LayerCurve(0.5, {})})
    cost = LatencyCost(model, analysis, counts, table)
    assert cost.cost() == pytest.approx(3.5)
    kept = np.ones(analysis.n_classes, dtype=bool)
    kept[group.classes[: group.size // 2]] = False
    assert cost.evaluate(kept) == pytest.approx(3.5 - 2.0 + 2.0 * 0.6)   # half its channels: 0.6 of its time
    assert cost.restore_cost(group.classes[0]) > 0   # incrementally too
    kept[group.classes] = False
    assert cost.evaluate(kept) == pytest.approx(1.5)   # no channel left: the kernels that wrote it are gone


class _FakeGroup:
    """The fields and the method of a ChannelGroup that AllocationSettings.curve reads."""

    fewest = ChannelGroup.fewest

    def __init__(self, size: int):
        self.id, self.size, self.classes, self.frozen = 0, size, np.arange(size), np.zeros(size, dtype=bool)


class _Staircase:
    """A cost that only drops when a whole block of 4 classes is gone (as NCHWc channel blocks do)."""

    def __init__(self, n: int):
        self.n, self.before = n, float(n)
        self.gone: set[int] = set()

    def cost(self) -> float:
        return float(-(-(self.n - len(self.gone)) // 4) * 4)

    def _after(self, gone: set[int]) -> float:
        return float(-(-(self.n - len(gone)) // 4) * 4)

    def saving(self, classes) -> float:
        return self.cost() - self._after(self.gone | set(np.atleast_1d(classes).tolist()))

    def restore_cost(self, classes) -> float:
        return self._after(self.gone - set(np.atleast_1d(classes).tolist())) - self.cost()

    def remove(self, cls: int) -> None:
        self.gone.add(cls)

    def restore(self, cls: int) -> None:
        self.gone.discard(cls)

    def reset(self) -> None:
        self.gone = set()

    def evaluate(self, kept) -> float:
        self.gone = set(np.flatnonzero(~kept).tolist())
        return self.cost()


def test_allocation_crosses_steps_that_save_nothing():
    curve = GroupCurve(np.arange(8), np.linspace(1.0, 0.0, 9), min_keep=1)
    kept = allocate([curve], _Staircase(8), budget=4.0, n_classes=8)
    assert kept.sum() == 4 and kept[:4].all()  # the least important block of 4 went, nothing more


def test_two_budgets_both_hold_and_the_binding_one_decides():
    model, analysis, _ = _lenet()
    counts = count_model(model)
    groups = [g for g in analysis.groups if g.prunable]
    curves = [GroupCurve(g.classes, np.linspace(1.0, 0.0, g.size + 1) ** 2, 1) for g in groups]
    layers = {n.name: 1.0 for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    flops = CostModel(model, analysis, counts, "flops")
    latency = LatencyCost(model, analysis, counts, _table(model, analysis, layers, other=0.5))
    kept = allocate(curves, Budgets([flops, latency], [0.8 * flops.before, 0.6 * latency.before]), 1.0,
                    analysis.n_classes)
    assert flops.evaluate(kept) <= 0.8 * flops.before
    assert latency.evaluate(kept) <= 0.6 * latency.before
    assert latency.evaluate(kept) >= 0.58 * latency.before  # the latency budget binds, and is met closely


def test_compress_meets_flops_and_latency_targets_and_reports_the_prediction(tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    result = run_cli(["compress", RESNET, "--data", RESNET.with_name("resnet_basic.npz"), "--num-samples", 32,
                      "--target-flops", 0.8, "--target-latency", 0.7, "--latency-batch", 4, "--latency-runs", 3,
                      "-o", out, "--report", report])
    assert result.exit_code == 0, result.output
    assert "latency: keep 70.0% on cpu at batch 4; predicted" in result.output
    assert "latency: measured " in result.output
    doc = json.loads(report.read_text())
    lat = doc["latency"]
    assert lat["batch"] == 4 and lat["provider"] == "cpu" and lat["target"] == 0.7
    assert lat["predicted_ratio"] <= lat["budget"] + 0.02
    # a budget above the target only after a try measured well under it, and then the notes list the tries
    assert lat["budget"] <= 0.7 or "(predicted budget -> measured ratio)" in result.output
    assert lat["overhead_ms"] >= 0 and lat["original_ms"] > lat["overhead_ms"]
    assert lat["measured_ms"] > 0 and lat["measured_original_ms"] > 0 and lat["measured_noise"] >= 0
    # the median of the rounds' ratios against the ratio of the medians: apart by at most the rounds' spread (a
    # shared machine's rounds differ; 0.42 against 0.25 with other work running)
    by_medians = lat["measured_ms"] / lat["measured_original_ms"]
    assert abs(lat["measured_ratio"] - by_medians) <= max(0.5 * lat["measured_ratio"], 2 * lat["measured_noise"])
    assert doc["achieved"]["flops"] <= 0.8
    assert {"profile latency", "check latency"} <= set(doc["timings"])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_check_latency_times_both_models_in_turn():
    """A model against itself measures about 1; against a copy that does twice the work, more."""
    model = load_model(LENET)
    feeds = {model.graph.input[0].name: np.zeros((8, 1, 32, 32), np.float32)}
    cpu = resolve_providers(["cpu"])[0]
    same = check_latency(model, model, feeds, cpu, threads=1, runs=5, rounds=3)
    assert 0.5 < same.ratio < 2.0 and same.noise >= 0 and same.original_ms > 0 and same.pruned_ms > 0
    times = run_times([model, model], feeds, cpu, threads=1, runs=3, rounds=2)
    assert len(times) == 2 and all(len(t) == 2 and min(t) > 0 for t in times)


def _latency_run(tmp_path, monkeypatch, *extra):
    """compress --target-latency 0.8 at batch 4 (and ``extra`` options) on a table that prices every layer at its
    multiply-adds (not a profile of this machine: under load a measured table can make 0.8 reachable only by gutting
    the model)."""
    import onnxprune.compress as compress_module

    def table(model, analysis, feeds, provider, **kw):
        per_node = count_model(model).per_node
        ms = {n.name: per_node[n.name][1] / 1e6 for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
        return LatencyTable("cpu", 4, sum(ms.values()), {n: LayerCurve(t, {}) for n, t in ms.items()})

    monkeypatch.setattr(compress_module, "measure_latency", table)
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    result = run_cli(["compress", RESNET, "--data", RESNET.with_name("resnet_basic.npz"), "--num-samples", 32,
                      "--target-latency", 0.8, "--latency-runs", 2, "--latency-batch", 4, "-o", out,
                      "--report", report, *extra])
    assert result.exit_code == 0, result.output
    return result, json.loads(report.read_text())


def test_a_measured_miss_prunes_again_with_a_tighter_budget(tmp_path, monkeypatch):
    import onnxprune.compress as compress_module

    measured = iter([0.95, 0.5, 0.79])   # a miss, then far below, then close below: the last one is kept

    def fake_check(original, pruned, feeds, provider, **kw):
        ratio = next(measured)
        return LatencyCheck(10.0, 10.0 * ratio, ratio, 0.01)

    monkeypatch.setattr(compress_module, "check_latency", fake_check)
    result, doc = _latency_run(tmp_path, monkeypatch)
    assert "(predicted budget -> measured ratio): 0.800 -> 0.950 ± 0.010, 0.674 -> 0.500 ± 0.010" in result.output
    tighter = 0.8 * 0.8 / 0.95
    between = tighter + (0.8 - 0.5) / (0.95 - 0.5) * (0.8 - tighter)
    assert doc["latency"]["budget"] == pytest.approx(between, abs=1e-3)
    assert doc["latency"]["measured_ratio"] == 0.79


def test_a_small_miss_beyond_the_noise_prunes_again(tmp_path, monkeypatch):
    """0.815 ± 0.01 for 0.8: the scaled budget (0.785) is within NEAR of the first, so the retry goes NEAR tighter
    instead of stopping with a miss."""
    import onnxprune.compress as compress_module

    measured = iter([0.815, 0.78])
    monkeypatch.setattr(compress_module, "check_latency",
                        lambda *a, **kw: (lambda r: LatencyCheck(10.0, 10.0 * r, r, 0.01))(next(measured)))
    result, doc = _latency_run(tmp_path, monkeypatch)
    assert doc["latency"]["budget"] == pytest.approx(0.8 - compress_module.NEAR, abs=1e-3)
    assert doc["latency"]["measured_ratio"] == 0.78
    assert not [n for n in doc["notes"] if "missed" in n]


def test_a_small_miss_steps_tighter_whatever_the_float_round_off():
    """0.25 - 0.02 lies a hair under 0.02 from 0.25 in floating point: the tighter try must still be made."""
    from onnxprune.compress import NEAR, meet_measured_latency

    measured = {0.25: 0.26, round(0.25 - NEAR, 9): 0.24}
    budget, check, _ = meet_measured_latency(
        (None, 0.25), 0.25, 0.25, 0.05,
        lambda model: LatencyCheck(10.0, 10.0 * measured[model], measured[model], 0.005),
        lambda b: (None, round(b, 9)), [])
    assert budget == pytest.approx(0.25 - NEAR) and check.ratio == 0.24


def test_a_pruning_far_below_the_target_is_loosened_and_the_closest_one_that_meets_it_kept(tmp_path, monkeypatch):
    import onnxprune.compress as compress_module

    measured = iter([0.75, 0.79])   # well below 0.8: pruned again less, which meets it closely

    monkeypatch.setattr(compress_module, "check_latency",
                        lambda *a, **kw: (lambda r: LatencyCheck(10.0, 10.0 * r, r, 0.005))(next(measured)))
    result, doc = _latency_run(tmp_path, monkeypatch)
    assert doc["latency"]["budget"] == pytest.approx(0.8 * 0.8 / 0.75, abs=1e-3)
    assert doc["latency"]["measured_ratio"] == 0.79
    assert any("0.800 -> 0.750 ± 0.005, 0.853 -> 0.790 ± 0.005; kept the one at 0.853" in n for n in doc["notes"])


def test_tries_on_both_sides_of_the_target_go_on_past_the_retries_until_one_meets_it_closely():
    """A ratio that rises steeply with the budget (the PP-OCRv3 detector's shape): far below at 0.5, above at the
    loosened 0.75 and at the interpolated budget too; the bracketed search goes on and keeps the close one."""
    from onnxprune.compress import BRACKETED_RETRIES, RETRIES, meet_measured_latency

    def ratio(budget: float) -> float:
        return 0.16 + 2.8 * max(budget - 0.5, 0.0) if budget < 0.7 else 0.65   # 0.5 near budget 0.621

    budgets = []
    notes: list[str] = []
    budget, check, _ = meet_measured_latency(
        (None, 0.5), 0.5, 0.5, 0.05, lambda b: LatencyCheck(10.0, 10.0 * ratio(b), ratio(b), 0.005),
        lambda b: budgets.append(b) or (None, b), notes)
    assert RETRIES < len(budgets) <= BRACKETED_RETRIES
    assert 0.48 <= check.ratio <= 0.505 and budget == pytest.approx(budgets[-1])
    assert "kept the one at" in notes[0]


def test_a_lone_overshoot_stops_after_the_usual_retries_when_every_try_meets_the_target():
    from onnxprune.compress import RETRIES, meet_measured_latency

    budgets = []
    budget, check, _ = meet_measured_latency(
        (None, 0.5), 0.5, 0.5, 0.05, lambda b: LatencyCheck(10.0, 1.0, 0.1, 0.005),
        lambda b: budgets.append(b) or (None, b), [])
    assert len(budgets) <= RETRIES and check.ratio == 0.1


def test_timings_too_noisy_to_trust_are_said(tmp_path, monkeypatch):
    import onnxprune.compress as compress_module

    measured = iter([0.5, 1.0])   # a loaded machine: far below, then above the target, both within the noise
    monkeypatch.setattr(compress_module, "check_latency",
                        lambda *a, **kw: (lambda r: LatencyCheck(10.0, 10.0 * r, r, 0.3))(next(measured)))
    result, doc = _latency_run(tmp_path, monkeypatch)
    noisy = [n for n in doc["notes"] if "too noisy to trust" in n]
    assert len(noisy) == 1 and f"{doc['latency']['measured_ratio']:.3f} ± 0.300" in noisy[0]
    assert "onnxprune bench" in noisy[0]


def test_quiet_timings_say_nothing_of_noise(tmp_path, monkeypatch):
    import onnxprune.compress as compress_module

    monkeypatch.setattr(compress_module, "check_latency", lambda *a, **kw: LatencyCheck(10.0, 7.9, 0.79, 0.01))
    result, doc = _latency_run(tmp_path, monkeypatch)
    assert not [n for n in doc["notes"] if "noisy" in n]


def test_a_target_still_missed_after_the_retries_says_so(tmp_path, monkeypatch):
    import onnxprune.compress as compress_module

    calls = []
    monkeypatch.setattr(compress_module, "check_latency",
                        lambda *a, **kw: calls.append(1) or LatencyCheck(10.0, 9.9, 0.99, 0.001))
    result, doc = _latency_run(tmp_path, monkeypatch)
    assert len(calls) <= compress_module.RETRIES + 1
    assert "--target-latency 0.8 missed: the original's latency measured after each pruning" in " ".join(doc["notes"])
    assert "-> 0.990 ± 0.001; kept the fastest" in " ".join(doc["notes"])


def test_a_latency_target_that_guts_the_model_warns(tmp_path, monkeypatch):
    import onnxprune.compress as compress_module

    monkeypatch.setattr(compress_module, "COLLAPSE", 1.01)   # any pruning counts as gutting the model here
    result, doc = _latency_run(tmp_path, monkeypatch)
    warning = [n for n in doc["notes"] if "kept only" in n]
    assert warning and "onnxprune: warning: --target-latency 0.8 at batch 4 kept only" in result.output
    assert "pruning reaches at best" in warning[0] and "half the channels of every group is predicted at" in warning[0]


@pytest.mark.parametrize("value, message", [("1.5", "must be in (0, 1]"), ("0.001", "cannot be reached")])
def test_a_latency_target_out_of_reach_is_a_usage_error(tmp_path, value, message):
    out = tmp_path / "p.onnx"
    result = run_cli(["compress", LENET, "--data", DIGITS, "--target-latency", value, "--latency-runs", 2, "-o", out])
    assert result.exit_code == 4, result.output  # UsageError
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_next_budget_scales_then_interpolates_between_the_tries_either_side():
    from onnxprune.compress import next_budget

    assert next_budget([(0.5, 0.6)], 0.5) == pytest.approx(0.5 * 0.5 / 0.6)
    assert next_budget([(0.5, 0.587), (0.426, 0.435)], 0.5) == pytest.approx(0.426 + 0.065 / 0.152 * 0.074)
    assert next_budget([(0.5, 0.4), (0.6, 0.45)], 0.5) == pytest.approx(0.6 * 0.5 / 0.45)  # nothing above yet
    assert next_budget([(0.5, 0.2)], 0.5) == pytest.approx(0.75)   # loosened at most half-way to 1
