"""Every zoo topology (sample_models/zoo, both PyTorch exporters): keep-all is exact, half the FLOPs is valid.

Plus oracle tests on hand-built graphs for the patterns the zoo needs: a ConvTranspose consumer,
a grouped-conv producer and constant Resize sizes are re-fitted exactly when the removed channels
are redundant copies; Concat parts never lose every channel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import find_groups
from onnxprune.calibration.collect import CalibrationSettings
from onnxprune.compress import CompressOptions, compress
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise
from onnxprune.metrics import count_model
from onnxprune.plan import Target

from conftest import SAMPLES, real_inputs, relative_error, run_model

ZOO = SAMPLES / "zoo"
ZOO_MODELS = sorted(ZOO.glob("*.onnx"))
FAST = CalibrationSettings(max_positions=64)

# What each architecture cannot prune, as (op, words of the reason); every other model blocks nothing.
BLOCKED = {
    "convnext": {("LayerNormalization", "normalises across the channel axis")},
    "mlp": {("LayerNormalization", "normalises across the channel axis")},
    "resnext": {("Conv", "grouped convolution (group=4) keeps its input channels")},
    "shufflenet": {("Reshape", "channel-shuffle pattern"), ("Concat", "untracked channels")},
    "unet": {("Reshape", "GroupNorm")},
}


def _arch(path: Path) -> str:
    return path.name.split(".")[0]


def _feed(path: Path, n: int) -> dict[str, np.ndarray]:
    with np.load(ZOO / f"{_arch(path)}.npz") as data:
        return {k: data[k][-n:] for k in data.files}


def _signature(model: onnx.ModelProto):
    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return ([(i.name, i.type.tensor_type.elem_type, dims(i)) for i in real_inputs(model)],
            [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output],
            [(o.domain, o.version) for o in model.opset_import])


def test_zoo_is_complete_and_small():
    archs = {_arch(p) for p in ZOO_MODELS}
    assert len(archs) >= 12
    for arch in archs:
        assert (ZOO / f"{arch}.ts.onnx").is_file() and (ZOO / f"{arch}.dynamo.onnx").is_file()
        assert (ZOO / f"{arch}.npz").is_file()
    assert sum(p.stat().st_size for p in ZOO.iterdir()) < 10 << 20


@pytest.mark.parametrize("path", ZOO_MODELS, ids=lambda p: p.name)
def test_keep_all_reproduces_outputs(path: Path):
    result = compress(path, ZOO / f"{_arch(path)}.npz", CompressOptions(target=Target("flops", 1.0), num_samples=4,
                                                                         holdout=0.0))
    feed = _feed(path, 5)
    for a, b in zip(run_model(path, feed), run_model(result.model, feed)):
        assert relative_error(a, b) < 1e-4
    assert _signature(result.model) == _signature(load_model(path))


@pytest.mark.parametrize("path", ZOO_MODELS, ids=lambda p: p.name)
def test_half_flops_gives_valid_smaller_model(path: Path):
    options = CompressOptions(target=Target("flops", 0.5), num_samples=16, holdout=0.25, calibration=FAST)
    result = compress(path, ZOO / f"{_arch(path)}.npz", options)
    pruned, original = result.model, load_model(path)
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(pruned) == _signature(original)
    outs = run_model(pruned, _feed(path, 3))
    assert [o.shape for o in outs] == [o.shape for o in run_model(original, _feed(path, 3))]
    assert all(np.isfinite(o).all() for o in outs)
    assert count_model(pruned).flops <= 0.6 * count_model(original).flops
    _assert_blocked(_arch(path), {(op, reason) for _, op, reason in result.report.blocked})


def _assert_blocked(arch: str, blocked: set[tuple[str, str]]) -> None:
    """Exactly the expected patterns are frozen (a Shape read of a count that is frozen anyway may come along)."""
    expected = BLOCKED.get(arch, set())
    assert {op for op, _ in blocked} - {"Shape"} == {op for op, _ in expected}, blocked
    for op, words in expected:
        assert any(o == op and words in r for o, r in blocked), (op, words, blocked)


@pytest.mark.parametrize("arch", sorted({_arch(p) for p in ZOO_MODELS}))
def test_both_exporters_give_the_same_groups(arch: str):
    def shape(path):
        analysis = find_groups(normalise(load_model(path)))
        return sorted((g.size, int(g.frozen.sum()), g.prunable, len(g.consumers)) for g in analysis.groups)
    assert shape(ZOO / f"{arch}.ts.onnx") == shape(ZOO / f"{arch}.dynamo.onnx")


# --------------------------------------------------------------------------- hand-built oracles
def _model(nodes, inits: dict[str, np.ndarray], inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "oracle", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              [numpy_helper.from_array(v if v.dtype.kind == "i" else v.astype(np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _duplicated_conv(rng: np.random.Generator, cin: int, half: int, groups: int = 1) -> np.ndarray:
    """Conv weights [2*half, cin/groups, 3, 3] whose second half (per group) is twice the first: redundant after Relu."""
    per = 2 * half // groups
    w = rng.standard_normal((groups, per // 2, cin // groups, 3, 3))
    return np.concatenate([w, 2.0 * w], axis=1).reshape(2 * half, cin // groups, 3, 3)


def _compress_oracle(model: onnx.ModelProto, tmp_path: Path, target: float):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    options = CompressOptions(target=Target("flops", target), num_samples=32, holdout=0.25)
    result = compress(path, tmp_path / "d.npz", options)
    onnx.checker.check_model(result.model, full_check=True)
    feed = {"input": x[-8:]}
    return result, run_model(model, feed)[0], run_model(result.model, feed)[0]


def test_conv_transpose_consumer_refit_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(
        [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("ConvTranspose", ["r1", "wt", "bt"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1],
                          output_padding=[1, 1], kernel_shape=[3, 3]),
         helper.make_node("Relu", ["up"], ["r2"]),
         helper.make_node("Conv", ["r2", "w2"], ["out"], pads=[1] * 4)],
        {"w1": _duplicated_conv(rng, 3, 4), "wt": rng.standard_normal((8, 6, 3, 3)), "bt": rng.standard_normal(6),
         "w2": rng.standard_normal((2, 6, 3, 3))},
        [("input", ["N", 3, 8, 8])], [("out", ["N", 2, 16, 16])])
    result, before, after = _compress_oracle(model, tmp_path, 0.85)
    inits = {i.name: i for i in result.model.graph.initializer}
    convt = next(n for n in result.model.graph.node if n.op_type == "ConvTranspose")
    assert inits[convt.input[1]].dims[0] < 8        # input channels of the ConvTranspose removed
    assert relative_error(before, after) < 1e-3


def test_grouped_conv_outputs_pruned_equally_per_group(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(
        [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "wg"], ["g"], pads=[1] * 4, group=2),
         helper.make_node("Relu", ["g"], ["r2"]),
         helper.make_node("Conv", ["r2", "w2"], ["out"], pads=[1] * 4)],
        {"w1": rng.standard_normal((8, 3, 3, 3)), "wg": _duplicated_conv(rng, 8, 4, groups=2),
         "w2": rng.standard_normal((2, 8, 3, 3))},
        [("input", ["N", 3, 8, 8])], [("out", ["N", 2, 8, 8])])
    analysis = find_groups(normalise(model))
    grouped = next(g for g in analysis.groups if g.producers == ["Conv:g"])
    assert grouped.size == 4                         # channel j of both groups is one class
    assert any("grouped convolution (group=2)" in r for g in analysis.groups for r in g.reasons)
    result, before, after = _compress_oracle(model, tmp_path, 0.8)
    inits = {i.name: i for i in result.model.graph.initializer}
    conv = next(n for n in result.model.graph.node if n.output[0] == "g")
    assert inits[conv.input[1]].dims[0] in (2, 4, 6) and inits[conv.input[1]].dims[1] == 4
    assert relative_error(before, after) < 1e-3


def test_constant_resize_sizes_follow_the_channels(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(
        [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Resize", ["r1", "", "", "sizes"], ["up"], mode="linear"),
         helper.make_node("Conv", ["up", "w2"], ["out"], pads=[1] * 4)],
        {"w1": _duplicated_conv(rng, 3, 4), "w2": rng.standard_normal((2, 8, 3, 3)),
         "sizes": np.array([1, 8, 16, 16], np.int64)},
        [("input", [1, 3, 8, 8])], [("out", [1, 2, 16, 16])])
    result, before, after = _compress_oracle(model, tmp_path, 0.5)
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    resize = next(n for n in result.model.graph.node if n.op_type == "Resize")
    assert inits[resize.input[3]].tolist() == [1, 4, 16, 16]
    assert relative_error(before, after) < 1e-3


def test_every_concat_part_keeps_a_channel():
    rng = np.random.default_rng(0)
    model = _model(
        [helper.make_node("Conv", ["input", "wa"], ["a"]), helper.make_node("Conv", ["input", "wb"], ["b"]),
         helper.make_node("Concat", ["a", "b"], ["ab"], axis=1), helper.make_node("Relu", ["ab"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["out"])],
        {"wa": rng.standard_normal((4, 3, 1, 1)), "wb": rng.standard_normal((4, 3, 1, 1)),
         "w2": rng.standard_normal((2, 8, 1, 1))},
        [("input", ["N", 3, 8, 8])], [("out", ["N", 2, 8, 8])])
    analysis = find_groups(normalise(model))
    group = next(g for g in analysis.groups if g.consumers)
    assert group.size == 8 and group.prunable
    frozen = set(group.classes[group.frozen].tolist())
    assert frozen & set(analysis.classes_of("a").tolist()) and frozen & set(analysis.classes_of("b").tolist())
    assert any("always kept" in r for r in group.reasons)
