"""--round-to, --min-keep and --exclude, and the residual-sum handling of the error-correcting pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.analysis import find_groups
from onnxprune.calibration.collect import CalibrationSettings, collect_statistics
from onnxprune.calibration.sources import open_data
from onnxprune.compress import CompressOptions, compress, input_specs
from onnxprune.errors import UsageError
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise, static_shapes
from onnxprune.metrics import count_model
from onnxprune.plan import AllocationSettings, SolverSettings, Target, near_output_default, rank_groups
from onnxprune.residual import near_output_consumers, output_consumers, residual_landings

from conftest import SAMPLES

ZOO = SAMPLES / "zoo"
RESNET = ZOO / "resnet_basic.ts.onnx"
VGG = ZOO / "vgg_bn.ts.onnx"


def _compress(model: Path, **options) -> tuple:
    result = compress(model, model.with_name(model.name.split(".")[0] + ".npz"),
                      CompressOptions(num_samples=32, **options))
    return result, count_model(result.model).flops / count_model(load_model(model)).flops


def test_round_to_keeps_multiples_and_meets_the_target():
    result, kept = _compress(VGG, target=Target("flops", 0.5), allocation=AllocationSettings(round_to=4))
    assert 0.48 <= kept <= 0.5
    touched = [g for g in result.plan.groups if g.after < g.before]
    assert touched
    for g in result.plan.groups:
        if g.before % 4 == 0:
            assert g.after % 4 == 0, (g.name, g.before, g.after)


def test_min_keep_is_a_floor_for_every_group():
    result, kept = _compress(VGG, target=Target("flops", 0.5), allocation=AllocationSettings(min_keep=0.4))
    assert kept <= 0.5
    for g in result.plan.groups:
        assert g.after >= np.ceil(0.4 * g.before), (g.name, g.before, g.after)


def test_exclude_leaves_matching_groups_alone():
    result, _ = _compress(VGG, target=Target("flops", 0.6), exclude=("/0/*",))
    excluded = [g for g in result.plan.groups if any("excluded by --exclude" in r for r in g.reasons)]
    assert excluded and all(g.after == g.before for g in excluded)
    assert any("--exclude" in n for n in result.report.notes)


def test_exclude_pattern_matching_nothing_is_refused():
    with pytest.raises(UsageError, match="matches no"):
        _compress(VGG, target=Target("flops", 0.6), exclude=("no-such-node",))


def _resnet():
    model = normalise(load_model(RESNET))
    data = open_data(ZOO / "resnet_basic.npz", input_specs(model))
    shapes = static_shapes(model, {k: (1, *v.shape[1:]) for k, v in data.load([0]).items()})
    return model, data, find_groups(model, shapes)


def test_residual_landings_are_the_block_outputs():
    model, _, analysis = _resnet()
    consumers = [c for g in analysis.groups for c in g.consumers]
    landings = residual_landings(model, analysis, consumers)
    adds = {n.output[0] for n in model.graph.node if n.op_type == "Add"}
    assert landings and all(l.total in adds for l in landings.values())
    for node, landing in landings.items():
        assert analysis.shapes[landing.other] == analysis.shapes[landing.total]


@pytest.mark.parametrize("after,rectified", [("Relu", True), ("Clip attribute", True), ("Clip input", True),
                                             ("Clip below zero", False), ("Identity", False)])
def test_a_sum_is_rectified_only_when_a_relu_reads_it(after, rectified):
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.residual import Landing, rectified_sums

    inits, bound = [], -1.0 if after == "Clip below zero" else 0.0
    if after == "Relu" or after == "Identity":
        last = helper.make_node(after, ["s"], ["y"])
    elif after == "Clip attribute":
        last = helper.make_node("Clip", ["s"], ["y"], min=0.0, max=6.0)
    else:
        inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", bound), ("hi", 6.0))]
        last = helper.make_node("Clip", ["s", "lo", "hi"], ["y"])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"]), last], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    assert rectified_sums(helper.make_model(graph), {"conv": Landing("s", "b")}) == ({"conv"} if rectified else set())


def test_the_residual_power_is_two_on_rectified_sums_and_one_on_linear_ones():
    from onnxprune.plan import _gains

    model, _, analysis = _resnet()   # basic blocks: Add then Relu
    consumers = [c for g in analysis.groups for c in g.consumers]
    landings = residual_landings(model, analysis, consumers)

    class Gain:
        gain = 0.5

    stats = {node: Gain() for node in landings}
    auto = _gains(model, analysis, stats, SolverSettings())
    assert all(auto[node] == 0.25 for node in landings)
    relu = next(n for n in model.graph.node if n.op_type == "Relu" and n.input[0] == next(iter(landings.values())).total)
    relu.op_type = "Identity"   # that block's stream stays linear now
    linear = _gains(model, analysis, stats, SolverSettings())
    assert sorted({linear[node] for node in landings}) == [0.25, 0.5]
    forced = _gains(model, analysis, stats, SolverSettings(residual_power=1.0))
    assert all(forced[node] == 0.5 for node in landings)


def test_a_landing_through_a_batch_norm_recovers_the_consumers_output():
    """conv → BatchNormalization → Add (paddle2onnx keeps the BN): the sum minus the other branch, mapped back
    through the BN, is the conv's own output; a BN with a zero scale is no landing."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import run_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)

    def model(gamma):
        inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
            ("w0", rng.standard_normal((4, 4, 1, 1))), ("w1", rng.standard_normal((6, 4, 3, 3))),
            ("w2", rng.standard_normal((4, 6, 1, 1))), ("g", gamma), ("b", rng.standard_normal(4)),
            ("m", rng.standard_normal(4)), ("v", rng.random(4) + 0.5))]
        nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
                 helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
                 helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
                 helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
                 helper.make_node("BatchNormalization", ["c2", "g", "b", "m", "v"], ["n2"], name="bn2"),
                 helper.make_node("Add", ["n2", "r0"], ["s"], name="add"),
                 helper.make_node("Relu", ["s"], ["y"], name="relu2")]
        graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])], inits)
        return normalise(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    m = model(rng.standard_normal(4) + 2.0)
    analysis = find_groups(m, static_shapes(m))
    (node, landing), = residual_landings(m, analysis, analysis.consumers).items()
    assert node == "conv2" and landing.total == "s" and landing.other == "r0" and landing.scale is not None
    probe = onnx.helper.make_model(m.graph, opset_imports=m.opset_import)
    probe.graph.output.extend([onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                               for t in ("c2", "r0", "s")])
    c2, r0, total = run_model(probe, {"x": x})[1:]
    np.testing.assert_allclose(landing.output_for(total - r0), c2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(landing.branch(c2) + r0, total, rtol=1e-4, atol=1e-4)
    zero = model(np.array([1.0, 0.0, 1.0, 1.0]))
    assert residual_landings(zero, find_groups(zero, static_shapes(zero)), analysis.consumers) == {}


def test_residual_target_is_the_original_sum_minus_the_pruned_other_branch():
    model, data, analysis = _resnet()
    consumers = [c for g in analysis.groups for c in g.consumers]
    landings = residual_landings(model, analysis, consumers)
    node, landing = next(iter(landings.items()))
    cons = next(c for c in consumers if c.node == node)
    indices = np.arange(16)
    settings = CalibrationSettings(max_positions=None)
    # keep-all "pruned" network: the target is the original sum minus the same shortcut = the conv output
    mask = {node: np.ones(analysis.shapes[cons.output][1], dtype=bool)}
    plain = collect_statistics(model, [cons], data, indices, settings, folds=False)[node].full.centred()
    residual = collect_statistics(model, [cons], data, indices, settings, folds=False, inputs_model=model,
                                  landings=landings, output_masks=mask)[node].full.centred()
    np.testing.assert_allclose(residual.C, plain.C, rtol=1e-4, atol=1e-6 * np.abs(plain.C).max())
    np.testing.assert_allclose(residual.c0, plain.c0, rtol=1e-4)
    # the first pass measures how much of the stream each writer carries
    gains = collect_statistics(model, [cons], data, indices, settings, folds=False, landings=landings)[node]
    assert gains.gain is not None and 0.0 < gains.gain


def test_residual_stream_and_inner_channels_are_pruned_and_valid():
    result, kept = _compress(RESNET, target=Target("flops", 0.5))
    assert kept <= 0.5
    onnx.checker.check_model(result.model, full_check=True)
    assert any("stages" in n for n in result.report.notes)


def test_search_budget_finds_the_smallest_good_fraction():
    from onnxprune.search import search_budget

    seen = []
    fraction, value = search_budget(lambda f: seen.append(f) or f, lambda v: v >= 0.3, floor=0.1, steps=8)
    assert 0.3 <= fraction < 0.3 + 0.9 / 2 ** 8 + 1e-12 and value == fraction
    assert seen[0] == 0.1                    # the floor is tried first
    assert search_budget(lambda f: f, lambda v: v >= 0.05, floor=0.1)[0] == 0.1


def test_target_fidelity_prunes_while_agreement_holds():
    result, kept = _compress(VGG, target_fidelity=0.8, holdout=0.25)
    assert result.report.fidelity.top1_agreement >= 0.8
    assert kept < 1.0
    assert any("--target-fidelity" in n for n in result.report.notes)


def test_target_fidelity_and_a_budget_are_exclusive():
    with pytest.raises(UsageError, match="either"):
        _compress(VGG, target_fidelity=0.9, target=Target("flops", 0.5))


def test_output_consumers_are_the_layers_no_linear_layer_follows():
    for path in (VGG, RESNET, ZOO / "yolo.ts.onnx"):
        model = normalise(load_model(path))
        data = open_data(path.with_name(path.name.split(".")[0] + ".npz"), input_specs(model))
        shapes = static_shapes(model, {k: (1, *v.shape[1:]) for k, v in data.load([0]).items()})
        analysis = find_groups(model, shapes)
        consumers = [c for g in analysis.groups for c in g.consumers]
        last = output_consumers(model, consumers)
        linear = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        expected = {n.name for n in linear if not any(
            m is not n and _reaches(model, n.output[0], m) for m in linear)} & {c.node for c in consumers}
        assert last and last == expected, (path.name, last, expected)
        near = near_output_consumers(model, consumers, last)
        expected = set()
        for c in consumers:
            after = {n.name for n in linear if _reaches(model, c.output, n)}
            if c.node not in last and after and after <= last:
                expected.add(c.node)
        assert near == expected, (path.name, near, expected)
        assert path.name.startswith("yolo") or near, path.name   # the chains' and ResNet's layer before the head


def _reaches(model: onnx.ModelProto, tensor: str, node: onnx.NodeProto) -> bool:
    """Whether ``node`` reads ``tensor`` or anything computed from it."""
    frontier, seen = [tensor], {tensor}
    while frontier:
        name = frontier.pop()
        for n in model.graph.node:
            if name in n.input:
                if n is node:
                    return True
                fresh = [t for t in n.output if t not in seen]
                seen.update(fresh)
                frontier.extend(fresh)
    return False


def test_output_weight_scales_the_error_curve_of_the_classifier_only():
    model = normalise(load_model(VGG))
    data = open_data(ZOO / "vgg_bn.npz", input_specs(model))
    shapes = static_shapes(model, {k: (1, *v.shape[1:]) for k, v in data.load([0]).items()})
    analysis = find_groups(model, shapes)
    consumers = [c for g in analysis.groups if g.prunable for c in g.consumers]
    stats = collect_statistics(model, consumers, data, range(32), CalibrationSettings())
    last = output_consumers(model, consumers)
    near = near_output_consumers(model, consumers, last)
    plain = rank_groups(model, analysis, stats, SolverSettings(output_weight=1.0))
    heavy = rank_groups(model, analysis, stats, SolverSettings(output_weight=5.0))
    nearer = rank_groups(model, analysis, stats, SolverSettings(output_weight=1.0, near_output_weight=3.0))
    scaled = kept = 0
    for a, b, c in zip(plain, heavy, nearer):
        nodes = {c.node for c in a.group.consumers}
        if nodes <= last:
            np.testing.assert_allclose(b.curve, 5.0 * a.curve)
            scaled += 1
        elif not nodes & last:
            np.testing.assert_array_equal(b.curve, a.curve)
        if nodes <= near:
            np.testing.assert_allclose(c.curve, 3.0 * a.curve)
            kept += 1
        elif not nodes & near:
            np.testing.assert_array_equal(c.curve, a.curve)
    assert scaled and kept   # the classifier by --output-weight, the layer before it by --near-output-weight


@pytest.mark.parametrize("kind, weight", [("dense", 2.5), ("yolo", 2.5), ("classes", 1.0), ("sequence", 1.0),
                                          ("other", 1.0)])
def test_the_layer_before_the_last_weighs_more_only_for_maps_and_detections(kind, weight):
    chosen = near_output_default(SolverSettings(output_weight=2.5), kind)
    assert chosen.near_output_weight == weight
    assert near_output_default(SolverSettings(near_output_weight=4.0), kind).near_output_weight == 4.0


@pytest.mark.parametrize("path, weight", [(ZOO / "unet.ts.onnx", 2.0), (VGG, 1.0)])
def test_compress_weighs_the_layer_before_the_last_by_what_the_outputs_are(path, weight, monkeypatch):
    import onnxprune.compress as compress_module

    seen = []
    original = compress_module.rank_groups
    monkeypatch.setattr(compress_module, "rank_groups",
                        lambda model, analysis, stats, settings, *a, **k:
                        seen.append(settings) or original(model, analysis, stats, settings, *a, **k))
    _compress(path, target=Target("flops", 0.7))
    assert [s.near_output_weight for s in seen] == [weight]


def _wide_head_model(classes: int) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv 3→6 → Relu → Conv 6→8 → GlobalAveragePool → Flatten → Gemm 8→classes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             [("w1", (6, 3, 3, 3)), ("b1", (6,)), ("w2", (8, 6, 3, 3)), ("b2", (8,)), ("wf", (classes, 8)),
              ("bf", (classes,))]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "wide_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("classes, wide", [(1000, True), (10, False)])
def test_a_last_layer_of_a_thousand_outputs_takes_the_wide_head_weight(tmp_path, classes, wide):
    model = _wide_head_model(classes)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32))
    data = open_data(tmp_path / "x.npz", input_specs(model))
    analysis = find_groups(model, static_shapes(model, {"x": (1, 3, 8, 8)}))
    consumers = [c for g in analysis.groups if g.prunable for c in g.consumers]
    stats = collect_statistics(model, consumers, data, range(64), CalibrationSettings())
    base = rank_groups(model, analysis, stats, SolverSettings(output_weight=1.0, wide_head_weight=1.0))
    heavy = rank_groups(model, analysis, stats, SolverSettings(output_weight=3.0, wide_head_weight=7.0))
    head = [(a, b) for a, b in zip(base, heavy) if {c.node for c in a.group.consumers} == {"head"}]
    assert len(head) == 1
    (a, b), = head
    np.testing.assert_allclose(b.curve, (7.0 if wide else 3.0) * a.curve)
    other = [(a, b) for a, b in zip(base, heavy) if "head" not in {c.node for c in a.group.consumers}]
    assert other and all(np.array_equal(a.curve, b.curve) for a, b in other)
