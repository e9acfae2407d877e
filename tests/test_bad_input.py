"""Bad or unusual input on the command line: one clear line, the right exit code, nothing written, input untouched.

Missing/garbage/truncated models, bad data, bad options and output paths and an unreachable target are
covered in test_cli.py; this file adds the cases below.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxprune.calibration.collect import collect_blocks
from onnxprune.metrics import count_model

from conftest import SAMPLES, random_feed, real_inputs, run_model, write_calibration
from test_cli import LENET, assert_clean_failure, run

CHAIN_A = SAMPLES / "chains" / "a_conv_bn_gap.onnx"


@pytest.fixture
def work(tmp_path) -> Path:
    shutil.copy(LENET, tmp_path / "lenet.onnx")
    return tmp_path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _conv_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_type: int = TensorProto.FLOAT,
                out_shape: tuple = ("N", 2, 8, 8)) -> onnx.ModelProto:
    """A small opset-13 graph from ``nodes``: input 'input' (N, 3, 8, 8), output 'out'."""
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", x_type, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(out_shape))], inits)
    return helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 13)])


def _weight(name: str, shape: tuple, dtype=np.float32, seed: int = 0) -> onnx.TensorProto:
    values = np.random.default_rng(seed).standard_normal(shape) * 10
    return numpy_helper.from_array(values.astype(dtype), name)


# ---------------------------------------------------------------------------------------------- model


def test_model_failing_full_check(work):
    model = onnx.load(str(work / "lenet.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7  # the Gemm writes 10: only shape inference sees it
    onnx.checker.check_model(model)  # the plain check passes
    bad = _save(model, work / "bad.onnx")
    data = write_calibration(bad, work)
    before = _files(work)
    result = run(["compress", bad, "--data", data, "-o", work / "out.onnx"])
    assert_clean_failure(result, work, code=2, text="fails onnx.checker")
    assert _files(work) == before


def _qdq_model() -> onnx.ModelProto:
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="quant_in"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"], name="dequant_in"),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2"], ["out"], name="conv2")]
    inits = [numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             _weight("w", (4, 3, 3, 3)), _weight("b", (4,)), _weight("w2", (2, 4, 1, 1))]
    return _conv_model(nodes, inits)


def _conv_integer_model() -> onnx.ModelProto:
    nodes = [helper.make_node("ConvInteger", ["input", "w"], ["c"], name="conv_int", pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["c"], ["out"], name="to_float", to=TensorProto.FLOAT)]
    return _conv_model(nodes, [_weight("w", (2, 3, 3, 3), np.uint8)], x_type=TensorProto.UINT8)


@pytest.mark.parametrize("build,op", [(_qdq_model, "QuantizeLinear"), (_conv_integer_model, "ConvInteger")])
def test_quantised_model_is_refused_naming_the_op(work, build, op):
    model = _save(build(), work / "q.onnx")
    onnx.checker.check_model(str(model), full_check=True)
    data = work / "q.npz"
    np.savez(data, input=np.zeros((4, 3, 8, 8), np.float32))
    before = model.read_bytes()
    result = run(["compress", model, "--data", data, "-o", work / "out.onnx"])
    assert_clean_failure(result, work, code=2, text=op)
    assert "quantised" in result.stderr and "float model" in result.stderr
    assert model.read_bytes() == before


def test_no_prunable_group_writes_nothing_unless_asked(work):
    # conv1 is frozen by the Softmax over channels, conv2 because its channels are the graph output
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c1"], ["s"], name="softmax", axis=1),
             helper.make_node("Conv", ["s", "w2", "b2"], ["out"], name="conv2")]
    inits = [_weight("w1", (4, 3, 3, 3)), _weight("b1", (4,)), _weight("w2", (2, 4, 1, 1)), _weight("b2", (2,))]
    model = _save(_conv_model(nodes, inits), work / "frozen.onnx")
    data = write_calibration(model, work, n=8)
    before = _files(work)
    result = run(["compress", model, "--data", data, "--target-flops", "0.5", "--method", "l1", "-o", work / "out.onnx"])
    assert result.exit_code == 0, result.output
    assert "nothing to prune" in result.stderr and "--write-unchanged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _files(work) == before
    again = run(["compress", model, "--data", data, "-o", work / "out.onnx", "--write-unchanged", "-q"])
    assert again.exit_code == 0, again.output
    feed = random_feed(model, 3)
    np.testing.assert_array_equal(run_model(model, feed)[0], run_model(work / "out.onnx", feed)[0])


def test_a_model_that_computes_non_finite_values_is_a_data_error(work):
    """A layer's rows are checked finite as they are drawn (the sums take them unchecked after): Log of the data's
    negative values gives NaN in conv2's input."""
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Log", ["c1"], ["l"], name="log"),
             helper.make_node("Conv", ["l", "w2", "b2"], ["out"], name="conv2")]
    inits = [_weight("w1", (4, 3, 3, 3)), _weight("b1", (4,)), _weight("w2", (2, 4, 1, 1)), _weight("b2", (2,))]
    model = _save(_conv_model(nodes, inits), work / "log.onnx")
    data = write_calibration(model, work, n=8)
    before = _files(work)
    result = run(["compress", model, "--data", data, "--target-flops", "0.5", "-o", work / "out.onnx"])
    assert_clean_failure(result, work, text="non-finite values at 'conv2'")
    assert _files(work) == before


# ---------------------------------------------------------------------------------------------- float16


def float16_model(model: onnx.ModelProto, keep_io_types: bool) -> onnx.ModelProto:
    """``model`` with float16 weights, as converters write it: float16 inputs/outputs, or float32 ones with Casts."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    if not keep_io_types:
        for vi in (*graph.input, *graph.output):
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
        return half
    (x,), (y,) = [i.name for i in real_inputs(half)], [o.name for o in graph.output]
    for node in graph.node:
        node.input[:] = [f"{x}_fp16" if i == x else i for i in node.input]
        node.output[:] = [f"{y}_fp16" if o == y else o for o in node.output]
    nodes = [helper.make_node("Cast", [x], [f"{x}_fp16"], name="cast_in", to=TensorProto.FLOAT16), *graph.node,
             helper.make_node("Cast", [f"{y}_fp16"], [y], name="cast_out", to=TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    return half


def _float_types(model: onnx.ModelProto) -> set[int]:
    return {i.data_type for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}


def _io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in (*real_inputs(model), *model.graph.output)]


@pytest.mark.parametrize("keep_io_types", [False, True], ids=["float16-io", "float32-io"])
def test_float16_model_is_pruned_and_stays_float16(work, monkeypatch, keep_io_types):
    half = float16_model(onnx.load(str(CHAIN_A)), keep_io_types)
    onnx.checker.check_model(half, full_check=True)
    model = _save(half, work / "half.onnx")
    data = write_calibration(CHAIN_A, work)
    calibrated = []
    monkeypatch.setattr("onnxprune.calibration.store.collect_blocks",
                        lambda m, *a, **k: calibrated.append(_float_types(m)) or collect_blocks(m, *a, **k))
    result = run(["compress", model, "--data", data, "--target-flops", "0.5", "-o", work / "out.onnx", "-q"])
    assert result.exit_code == 0, result.output
    assert calibrated == [{TensorProto.FLOAT}]  # statistics come from a float32 copy
    pruned = onnx.load(str(work / "out.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    assert _float_types(pruned) == {TensorProto.FLOAT16}
    assert _io_types(pruned) == _io_types(half)
    assert count_model(pruned).flops <= 0.5 * count_model(half).flops
    feed = {k: v.astype(np.float16 if not keep_io_types else np.float32) for k, v in random_feed(CHAIN_A, 4).items()}
    assert np.isfinite(run_model(pruned, feed)[0].astype(np.float32)).all()
    keep = run(["compress", model, "--data", data, "--target-flops", "1.0", "-o", work / "keep.onnx", "-q"])
    assert keep.exit_code == 0, keep.output
    np.testing.assert_array_equal(run_model(half, feed)[0], run_model(work / "keep.onnx", feed)[0])


# ---------------------------------------------------------------------------------------------- data


def test_images_of_different_sizes_need_image_size(work):
    model = onnx.load(str(CHAIN_A))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        dim.Clear()
        dim.dim_param = name
    dynamic = _save(model, work / "dynamic.onnx")
    folder = work / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(16, 16)] * 5 + [(20, 24)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = run(["compress", dynamic, "--data", folder, "-o", work / "out.onnx"])
    assert_clean_failure(result, work, code=3, text="differ in size")
    assert "16x16" in result.stderr and "20x24" in result.stderr and "--image-size" in result.stderr
    ok = run(["compress", dynamic, "--data", folder, "--image-size", "16", "-o", work / "out.onnx", "-q"])
    assert ok.exit_code == 0, ok.output


# ---------------------------------------------------------------------------------------------- Ctrl-C


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _interrupt_mid_write(model, path, *args, **kwargs):
    Path(path).write_bytes(b"partial")
    raise KeyboardInterrupt


@pytest.mark.parametrize("target,stand_in", [
    ("onnxprune.calibration.store.collect_blocks", _interrupt),   # during calibration
    ("onnx.save_model", _interrupt_mid_write),                 # while the output file is being written
], ids=["calibrating", "saving"])
def test_ctrl_c_leaves_no_file(work, monkeypatch, target, stand_in):
    model = Path(shutil.copy(CHAIN_A, work))
    data = write_calibration(model, work)
    before = _files(work)
    monkeypatch.setattr(target, stand_in)
    result = run(["compress", model, "--data", data, "--target-flops", "0.5", "-o", work / "out.onnx",
                  "--report", work / "r.json"])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "onnxprune: interrupted; no output was written."
    assert _files(work) == before
