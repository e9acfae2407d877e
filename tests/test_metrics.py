"""count_model on hand-built graphs whose parameters and multiply-adds are computed by hand."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import UsageError
from onnxprune.metrics import ModelCounts, block_flops, count_model, count_params

RNG = np.random.default_rng(0)


def _w(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, inits=(), opset=17, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 15 else 7
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_conv_with_stride_pad_and_group():
    # X 1x4x8x8, W 6x2x3x3, group 2, stride 2, pad 1 -> Y 1x6x4x4
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=2, strides=[2, 2],
                            pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    model = _model([node], [_vi("x", [1, 4, 8, 8])], [_vi("y", None)], [_w("w", 6, 2, 3, 3), _w("b", 6)])
    counts = count_model(model)
    assert isinstance(counts, ModelCounts)
    macs = (4 * 4) * 6 * (4 // 2) * 3 * 3
    assert counts.flops == macs == 1728
    assert counts.params == 6 * 2 * 9 + 6
    assert counts.per_node == {"conv": (6 * 2 * 9 + 6, macs)}


def test_block_flops_round_every_conv_output_count_up_to_the_block():
    """17 outputs compute as 32, 5 as 16, 32 as 32; inputs and a Gemm as counted."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="c2", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["b", "w3"], ["c"], name="c3", kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "w4"], ["y"], name="fc", transB=1)]
    model = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", None)],
                   [_w("w1", 17, 3, 3, 3), _w("w2", 5, 17, 1, 1), _w("w3", 32, 5, 1, 1), _w("w4", 10, 32 * 16)])
    counts = count_model(model)
    assert counts.conv_outputs == {"c1": 17, "c2": 5, "c3": 32}
    c1, c2, c3, fc = 16 * 17 * 27, 16 * 5 * 17, 16 * 32 * 5, 10 * 512
    assert counts.flops == c1 + c2 + c3 + fc
    assert block_flops(counts, 16) == 16 * 32 * 27 + 16 * 16 * 17 + c3 + fc
    assert block_flops(counts, 1) == counts.flops


def test_conv_dilation_and_asymmetric_pads_use_inferred_output():
    # 10x10, k3 dilation 2 (effective 5), pads (0, 1, 2, 3), stride 1 -> H 10+0+2-5+1=8, W 10+1+3-5+1=10
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", dilations=[2, 2], pads=[0, 1, 2, 3])
    model = _model([node], [_vi("x", [1, 3, 10, 10])], [_vi("y", None)], [_w("w", 5, 3, 3, 3)])
    assert count_model(model).flops == 8 * 10 * 5 * 3 * 9


def test_gemm_trans_b_and_trans_a():
    a = helper.make_node("Gemm", ["x", "w", "c"], ["h"], name="fc", transB=1)
    b = helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2", transA=1)
    # x 3x5, w 4x5 (transB) -> h 3x4 ; h^T is 4x3, w2 3x7 -> y 4x7
    model = _model([a, b], [_vi("x", [3, 5])], [_vi("y", None)], [_w("w", 4, 5), _w("c", 4), _w("w2", 3, 7)])
    counts = count_model(model)
    assert counts.per_node["fc"] == (20 + 4, 3 * 5 * 4)
    assert counts.per_node["fc2"] == (21, 4 * 3 * 7)
    assert counts.flops == 60 + 84
    assert counts.params == 20 + 4 + 21


def test_matmul_broadcast_batch_and_vectors():
    m1 = helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")  # (2,1,3,4) @ (5,4,6) -> (2,5,3,6)
    m2 = helper.make_node("MatMul", ["v", "w"], ["d"], name="vec")  # (4,) @ (4,6) -> (6,)
    model = _model(
        [m1, m2],
        [_vi("a", [2, 1, 3, 4]), _vi("b", [5, 4, 6]), _vi("v", [4])],
        [_vi("c", None), _vi("d", None)],
        [_w("w", 4, 6)],
    )
    counts = count_model(model)
    assert counts.per_node["mm"] == (0, 2 * 5 * 3 * 4 * 6)
    assert counts.per_node["vec"] == (24, 4 * 6)
    assert counts.params == 24


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(group):
    # X 1x4x5x5, W 4 x (C_out/group) x 3 x 3, stride 2 -> MACs = input positions x C_in x C_out/group x 9
    c_out_per_group = 3 if group == 1 else 2
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], group=group)
    model = _model([node], [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], [_w("w", 4, c_out_per_group, 3, 3)])
    counts = count_model(model)
    assert counts.flops == 25 * 4 * c_out_per_group * 9
    assert counts.params == 4 * c_out_per_group * 9


def test_dynamic_batch_is_counted_at_one_and_symbolic_sizes_at_the_given_shape():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    model = _model([conv], [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 8, 8, 8])], [_w("w", 8, 3, 3, 3)])
    assert count_model(model).flops == 8 * 8 * 8 * 3 * 9
    # a symbolic spatial size is never guessed: it must be given, and is counted there
    model2 = _model([conv], [_vi("x", ["N", 3, "H", "W"])], [_vi("y", None)], [_w("w", 8, 3, 3, 3)])
    with pytest.raises(UsageError, match=r"symbolic dims \(Nx3xHxW\)") as raised:
        count_model(model2)
    assert "--shape x:1x3x640x640" in raised.value.note
    assert count_model(model2, {"x": (1, 3, 20, 30)}).flops == 20 * 30 * 8 * 3 * 9
    assert count_model(model2, {"x": (1, 3, 40, 30)}).flops == 2 * 20 * 30 * 8 * 3 * 9
    # a batch dim without any name or value
    model3 = _model([conv], [_vi("x", [None, 3, 8, 8])], [_vi("y", None)], [_w("w", 8, 3, 3, 3)])
    assert count_model(model3).flops == 8 * 8 * 8 * 3 * 9


def test_conv_counts_per_sample_with_fixed_batch():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    model = _model([conv], [_vi("x", [4, 3, 6, 6])], [_vi("y", None)], [_w("w", 2, 3, 3, 3)])
    assert count_model(model).flops == 4 * 4 * 2 * 3 * 9


def test_params_float_only_constants_and_empty_names():
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    const = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones((3, 2), np.float32)))
    flat = helper.make_node("Reshape", ["x", "shape"], ["f"])
    mm = helper.make_node("MatMul", ["f", "k"], ["y"])  # no name: keyed by its output
    half = numpy_helper.from_array(np.ones(5, dtype=np.float16), "unused_half")
    model = _model([const, flat, mm], [_vi("x", [1, 3])], [_vi("y", None)], [shape, half])
    counts = count_model(model)
    assert counts.params == 6 + 5  # float Constant + float16 initializer; the int64 shape is not a parameter
    assert counts.per_node == {"y": (6, 1 * 3 * 2)}
    assert count_params(model) == counts.params


def test_duplicate_and_missing_names_are_unique():
    n1 = helper.make_node("MatMul", ["x", "w"], ["h"], name="same")
    n2 = helper.make_node("MatMul", ["h", "w"], ["y"], name="same")
    model = _model([n1, n2], [_vi("x", [2, 2])], [_vi("y", None)], [_w("w", 2, 2)])
    assert set(count_model(model).per_node) == {"same", "same#2"}


def test_opset_7_model():
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3])
    flat = helper.make_node("Flatten", ["c"], ["f"], axis=1)
    gemm = helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)
    model = _model(
        [conv, flat, gemm], [_vi("x", [1, 1, 5, 5])], [_vi("y", None)],
        [_w("w", 2, 1, 3, 3), _w("fw", 10, 18), _w("fb", 10)], opset=7,
    )
    counts = count_model(model)
    assert counts.per_node["conv"] == (18, 9 * 2 * 1 * 9)
    assert counts.per_node["fc"] == (190, 18 * 10)
    assert counts.params == 18 + 180 + 10


def test_external_data_loaded_or_not(tmp_path):
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    model = _model([conv], [_vi("x", ["N", 16, 8, 8])], [_vi("y", None)], [_w("w", 32, 16, 3, 3)])
    expected = count_model(model)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").exists()
    assert count_model(onnx.load(str(path))) == expected
    assert count_model(onnx.load(str(path), load_external_data=False)) == expected


def test_model_is_not_modified():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    model = _model([conv], [_vi("x", ["N", 3, 8, 8])], [_vi("y", None)], [_w("w", 70, 3, 3, 3)])
    before = model.SerializeToString()
    count_model(model)
    assert model.SerializeToString() == before


def test_unknown_shape_names_the_node():
    mystery = helper.make_node("Mystery", ["x"], ["m"], domain="custom.ops")
    conv = helper.make_node("Conv", ["m", "w"], ["y"], name="after_mystery")
    graph = helper.make_graph([mystery, conv], "g", [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], [_w("w", 2, 3, 3, 3)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    with pytest.raises(ValueError, match="after_mystery"):
        count_model(model)


def test_shape_arithmetic_beyond_data_propagation_is_folded():
    # torch's option-A shortcut: pads computed by Transpose + Reshape of constants (not covered by ONNX
    # data propagation), then Pad, then a Conv whose output shape depends on those pads.
    pads_2x4 = numpy_helper.from_array(np.array([[0, 0, 0, 0], [0, 2, 0, 0]], dtype=np.int64).T.copy(), "p")  # 4x2
    target = numpy_helper.from_array(np.array([8], dtype=np.int64), "eight")
    nodes = [
        helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0]),
        helper.make_node("Reshape", ["pt", "eight"], ["pads"]),
        helper.make_node("Pad", ["x", "pads"], ["xp"], mode="constant"),
        helper.make_node("Conv", ["xp", "w"], ["y"], name="conv", kernel_shape=[1, 1]),
    ]
    model = _model(nodes, [_vi("x", ["N", 2, 4, 4])], [_vi("y", None)], [pads_2x4, target, _w("w", 3, 4, 1, 1)])
    assert count_model(model).flops == 16 * 3 * 4
