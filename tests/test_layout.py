"""Channel-padding shortcuts written as 1x1 convolutions (onnxprune/rewrite/layout.py), the budgets' room for them
and the latency baseline of copies profiled rewritten."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from cli.main import cli
from onnxprune.analysis import find_groups
from onnxprune.graph.normalise import normalise
from onnxprune.latency import LatencyCost, LatencyTable, LayerCurve
from onnxprune.metrics import count_model
from onnxprune.plan import AllocationSettings, Target, minimum_fraction
from onnxprune.rewrite.layout import added_cost, shortcut_convs

from conftest import run_model

END = np.iinfo(np.int64).max


def _resnet_a(shared_slice: bool = False, batch: int | str = "N") -> onnx.ModelProto:
    """A small CIFAR-style ResNet: a stem, a basic block, a downsampling block whose shortcut takes every other
    row and column (two Slices) and pads zero channels (Pad 4 + 4, as option A does), one more block, a head."""
    rng = np.random.default_rng(0)
    inits = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
                                             .astype(np.float32), name))
        return name

    shapes = {"w0": (8, 3, 3, 3), "w1": (8, 8, 3, 3), "w2": (8, 8, 3, 3), "w3": (16, 8, 3, 3), "w4": (16, 16, 3, 3),
              "w5": (16, 16, 3, 3), "w6": (16, 16, 3, 3), "fc": (10, 16)}

    def conv(x: str, w: str, y: str, stride: int = 1) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, w, weight(w + "_b", shapes[w][:1])], [y], w.replace("w", "conv"),
                                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])

    for name, shape in shapes.items():
        weight(name, shape)
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              [("s0", [0]), ("end", [END]), ("ax2", [2]), ("ax3", [3]), ("two", [2]), ("pads", [0, 4, 0, 0, 0, 4, 0, 0])]]
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "pad_value"))
    nodes = [conv("x", "w0", "h0"), helper.make_node("Relu", ["h0"], ["r0"], "relu0"),
             conv("r0", "w1", "a1"), helper.make_node("Relu", ["a1"], ["b1"], "relu1a"), conv("b1", "w2", "c1"),
             helper.make_node("Add", ["c1", "r0"], ["s1"], "add1"), helper.make_node("Relu", ["s1"], ["r1"], "relu1"),
             conv("r1", "w3", "a2", stride=2), helper.make_node("Relu", ["a2"], ["b2"], "relu2a"), conv("b2", "w4", "c2"),
             helper.make_node("Slice", ["r1", "s0", "end", "ax2", "two"], ["sl1"], "slice_h"),
             helper.make_node("Slice", ["sl1", "s0", "end", "ax3", "two"], ["sl2"], "slice_w"),
             helper.make_node("Pad", ["sl2", "pads", "pad_value"], ["sc"], "shortcut_pad"),
             helper.make_node("Add", ["c2", "sc"], ["s2"], "add2"), helper.make_node("Relu", ["s2"], ["r2"], "relu2"),
             conv("r2", "w5", "a3"), helper.make_node("Relu", ["a3"], ["b3"], "relu3a"), conv("b3", "w6", "c3"),
             helper.make_node("Add", ["c3", "r2"], ["s3"], "add3"), helper.make_node("Relu", ["s3"], ["r3"], "relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["p"], "gap"),
             helper.make_node("Flatten", ["p"], ["f"], "flat"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], "head", transB=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])]
    if shared_slice:   # the first Slice's output also leaves the graph: it must stay
        outputs.append(helper.make_tensor_value_info("sl1", TensorProto.FLOAT, [batch, 8, 8, 16]))
    graph = helper.make_graph(nodes, "resnet_a", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [batch, 3, 16, 16])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feed(n: int = 8) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def _close(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    for x, y in zip(run_model(a, _feed()), run_model(b, _feed())):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(np.abs(x).max()))


def test_a_padding_shortcut_becomes_one_strided_conv_with_the_same_values():
    model = _resnet_a()
    rewritten, replaced = shortcut_convs(model)
    assert replaced == ["shortcut_pad"]
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Pad" not in ops and "Slice" not in ops and ops.count("Conv") == 8
    conv = next(n for n in rewritten.graph.node if n.output[0] == "sc")
    assert conv.input[0] == "r1" and helper.get_attribute_value(conv.attribute[1]) == [2, 2]
    weight = numpy_helper.to_array(next(i for i in rewritten.graph.initializer if i.name == conv.input[1]))
    assert weight.shape == (16, 8, 1, 1) and weight.sum() == 8 and (weight[4:12, :, 0, 0] == np.eye(8)).all()
    read = {t for n in rewritten.graph.node for t in n.input}
    assert {i.name for i in rewritten.graph.initializer} <= read   # the Slices' and Pad's amounts are gone
    assert [i.name for i in rewritten.graph.input] == ["x"] and [o.name for o in rewritten.graph.output] == ["y"]
    _close(model, rewritten)
    assert any(n.op_type == "Pad" for n in model.graph.node)   # the input model is left as it was


def _slices_and_pad(pads: list[int], value: float = 0.0, start: int = 0, mode: str = "constant") -> onnx.ModelProto:
    """x [1, 8, 8, 8] -> Slice rows from ``start`` by 2 -> Slice columns by 2 -> Pad ``pads`` of ``value``."""
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             [("s0", [start]), ("z", [0]), ("end", [END]), ("ax2", [2]), ("ax3", [3]), ("two", [2]), ("pads", pads)]]
    inits.append(numpy_helper.from_array(np.array(value, np.float32), "v"))
    nodes = [helper.make_node("Slice", ["x", "s0", "end", "ax2", "two"], ["a"], "slice_h"),
             helper.make_node("Slice", ["a", "z", "end", "ax3", "two"], ["b"], "slice_w"),
             helper.make_node("Pad", ["b", "pads", "v"], ["y"], "pad", mode=mode)]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kwargs", [dict(value=1.0), dict(pads=[0, 0, 1, 0, 0, 0, 1, 0]), dict(mode="edge"),
                                    dict(pads=[0, 4, 1, 0, 0, 4, 0, 0])],
                         ids=["nonzero-value", "spatial-axis", "edge-mode", "channels-and-rows"])
def test_other_pads_stay(kwargs):
    model = _slices_and_pad(**{"pads": [0, 4, 0, 0, 0, 4, 0, 0], **kwargs})
    rewritten, replaced = shortcut_convs(model)
    assert replaced == [] and rewritten is model


def test_a_slice_from_another_row_ends_the_chain():
    """The Slice that starts at row 1 stays; the Pad after the column Slice is still written as a Conv."""
    model = _slices_and_pad([0, 4, 0, 0, 0, 4, 0, 0], start=1)
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 4
    rewritten, replaced = shortcut_convs(model)
    assert replaced == ["pad"]
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    assert conv.input[0] == "a" and helper.get_attribute_value(conv.attribute[1]) == [1, 2]
    onnx.checker.check_model(rewritten, full_check=True)
    feed = {"x": np.random.default_rng(2).standard_normal((1, 8, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run_model(model, feed)[0], run_model(rewritten, feed)[0])


def test_an_ir3_model_loses_the_amounts_from_its_inputs_too():
    """IR version 3 lists every initializer as a graph input: the Pad's and Slices' amounts leave both, the new
    weight enters both."""
    model = _resnet_a()
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                             for i in model.graph.initializer)
    rewritten, replaced = shortcut_convs(model)
    assert replaced == ["shortcut_pad"]
    inputs, inits = {i.name for i in rewritten.graph.input}, {i.name for i in rewritten.graph.initializer}
    assert "pads" not in inputs | inits and "two" not in inputs | inits and inputs - inits == {"x"}
    assert inits <= inputs   # the new weight listed too
    _close(model, rewritten)


def test_a_slice_read_elsewhere_stays():
    model = _resnet_a(shared_slice=True)
    rewritten, replaced = shortcut_convs(model)
    assert replaced == ["shortcut_pad"]
    assert [n.name for n in rewritten.graph.node if n.op_type == "Slice"] == ["slice_h"]
    _close(model, rewritten)


def test_added_cost_and_the_budgets_room():
    model = normalise(_resnet_a())
    counts = count_model(model)
    rewritten, _ = shortcut_convs(model)
    extra = added_cost(counts, rewritten)
    assert extra == {"flops": 16 * 8 * 8 * 8, "params": 16 * 8 - 1}   # the weight in, the Pad's float value out
    analysis = find_groups(model)
    plain = AllocationSettings(round_to=1)
    reserved = AllocationSettings(round_to=1, reserved=tuple(extra.items()))
    assert reserved.reserve("flops") == extra["flops"] and plain.reserve("flops") == 0
    floor = minimum_fraction(model, analysis, "flops", counts, plain)
    assert minimum_fraction(model, analysis, "flops", counts, reserved) == pytest.approx(
        floor + extra["flops"] / counts.flops)


def test_a_latency_table_profiled_rewritten_prices_against_the_original_as_given():
    """Fractions are of the original's own latency (``baseline``); with every channel kept the cost is the
    rewritten original's (its kernels and overhead)."""
    model = normalise(_resnet_a())
    analysis = find_groups(model)
    counts = count_model(model)
    layers = {n.name: LayerCurve(1.0, {}) for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    table = LatencyTable("cpu", 1, total=9.0, layers=layers, overhead=1.0, baseline=12.0)
    cost = LatencyCost(model, analysis, counts, table)
    assert cost.before == 12.0 and cost.cost() == pytest.approx(10.0)
    assert LatencyCost(model, analysis, counts, LatencyTable("cpu", 1, 9.0, layers, 1.0)).before == 10.0
    assert table.to_dict()["baseline_ms"] == 12.0


@pytest.fixture
def resnet_a_files(tmp_path):
    path = tmp_path / "resnet_a.onnx"
    onnx.save(_resnet_a(), str(path))
    np.savez(tmp_path / "calib.npz", x=_feed(96)["x"])
    return path, tmp_path / "calib.npz"


@pytest.mark.parametrize("flag", ["--shortcut-convs", "--no-shortcut-convs"])
def test_compress_writes_the_shortcut_as_a_conv_within_the_target(resnet_a_files, tmp_path, flag):
    path, calib = resnet_a_files
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["compress", str(path), "--data", str(calib), "--target-flops", "0.6",
                                      "--batch-size", "32", flag, "-o", str(out), "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    facts = json.loads(report.read_text())
    before, after = count_model(onnx.load(str(path))).flops, count_model(pruned).flops
    assert after <= 0.6 * before   # the shortcut's multiply-adds counted, within the target
    pads = [n for n in pruned.graph.node if n.op_type == "Pad"]
    if flag == "--shortcut-convs":
        assert facts["shortcut_convs"] == ["shortcut_pad"] and not pads
        assert any("channel-padding shortcut" in note for note in facts["notes"])
    else:
        assert facts["shortcut_convs"] == [] and len(pads) == 1
    assert np.isfinite(run_model(pruned, _feed())[0]).all()


def test_op_type_times_see_the_shortcut_go():
    """onnxruntime's kernels by op type: the model as given runs its Slices and Pad, the rewritten one does not."""
    from onnxprune.bench.profile import op_type_times
    from onnxprune.bench.providers import resolve_providers

    provider = resolve_providers(["cpu"])[0]
    model = _resnet_a()
    given = op_type_times(model, _feed(4), provider, runs=3, warmup=1)
    rewritten = op_type_times(shortcut_convs(model)[0], _feed(4), provider, runs=3, warmup=1)
    assert given["Pad"] > 0 and given["Slice"] > 0 and "Pad" not in rewritten and "Slice" not in rewritten
    assert all(v >= 0 for v in [*given.values(), *rewritten.values()]) and rewritten.get("Conv", 0) > 0
