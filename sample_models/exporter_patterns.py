"""Hand-built ONNX graphs in the style of exporters other than PyTorch, for the test suite.

Every model is built with onnx.helper + numpy (the chain models' ``_Builder``) from seeded random
weights, passes ``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime.

=================  =====  =====  ===============================================================
builder            opset  batch  what it mimics
=================  =====  =====  ===============================================================
tf_nhwc_chain      13     N      tf2onnx (Keras, NHWC input): Transpose(0,3,1,2), Conv auto_pad
                                 SAME_UPPER with weights through Identity, Keras BN as Mul+Add
                                 on the last axis between Transpose pairs, fused BN, then
                                 Transpose(0,2,3,1) -> Reshape [-1, H*W*C] (channel-last
                                 flatten) -> MatMul+Add -> Relu -> MatMul+Add -> Softmax
tf_nhwc_residual   13     N      tf2onnx: residual Add in NHWC between Transpose pairs, a
                                 ConvNeXt-like MatMul/Add/Relu/MatMul MLP over the last axis
                                 added back into the stream, ReduceMean over H,W -> MatMul
caffe2_resnet      8      1      Caffe2 (IR 3, initializers as inputs): BN with all five inputs
                                 and ``spatial``, MaxPool with explicit pads, LRN (GoogLeNet
                                 stem), ``Sum`` residuals with two and three inputs, Concat of
                                 two branches, Dropout with its mask, AveragePool over the whole
                                 map, Flatten(axis=1) -> Gemm(transB=1) -> Softmax(axis=1)
cntk_pad_times     8      1      CNTK (IR 3): Pad before each bias-less Conv, ``Plus`` = Add of a
                                 [C,1,1] constant, BN with ``spatial``, ``Times`` = Reshape to
                                 [1, C*H*W] with a constant shape -> MatMul whose weight is a
                                 Reshape of a [C,H,W,K] parameter, Add [1,K]
=================  =====  =====  ===============================================================

Expected prunability: everything except the channels normalised by Caffe2's LRN (the first conv)
and the channels that reach a graph output.

Write the models (e.g. to try the command line on them) with::

    python sample_models/exporter_patterns.py OUT_DIR
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chain_cnns import _Builder, _i64, _vi  # sample_models is not a package

NCHW_TO_NHWC = [0, 2, 3, 1]
NHWC_TO_NCHW = [0, 3, 1, 2]


def _tf_conv(b: _Builder, x: str, cin: int, cout: int, name: str, stride: int = 1) -> str:
    """tf2onnx Conv2D: weights reach the Conv through an Identity (ReadVariableOp), SAME padding."""
    w = b.node("Identity", [b.init(f"{name}/Conv2D/ReadVariableOp:0", b.he((cout, cin, 3, 3), cin * 9))],
               name=f"{name}/Conv2D/ReadVariableOp")
    bias = b.init(f"{name}/BiasAdd/ReadVariableOp:0", b.small((cout,)))
    return b.node("Conv", [x, w, bias], name=f"{name}/BiasAdd", kernel_shape=[3, 3], strides=[stride, stride],
                  dilations=[1, 1], auto_pad="SAME_UPPER", group=1)


def _tf_dense(b: _Builder, x: str, fin: int, fout: int, name: str) -> str:
    """Keras Dense: MatMul + Add of a [fout] bias."""
    x = b.node("MatMul", [x, b.init(f"{name}/MatMul/ReadVariableOp:0", b.small((fin, fout), np.sqrt(2.0 / fin)))],
               name=f"{name}/MatMul")
    return b.node("Add", [x, b.init(f"{name}/BiasAdd/ReadVariableOp:0", b.small((fout,), 0.05))],
                  name=f"{name}/BiasAdd")


def tf_nhwc_chain(seed: int = 20) -> onnx.ModelProto:
    """tf2onnx NHWC chain: SAME convs, Mul+Add BN on the last axis, channel-last flatten into MatMul."""
    b = _Builder(seed)
    x = b.node("Transpose", ["input_1"], name="model/conv1/Conv2D__6", perm=NHWC_TO_NCHW)
    x = b.node("Relu", [_tf_conv(b, x, 3, 8, "model/conv1")], name="model/conv1/Relu")          # 8x12x12
    x = _tf_conv(b, x, 8, 12, "model/conv2", stride=2)                                          # 12x6x6
    x = b.node("Transpose", [x], name="model/conv2/BiasAdd__20", perm=NCHW_TO_NHWC)
    gamma = b.rng.uniform(0.5, 1.5, 12).astype(np.float32)
    x = b.node("Mul", [x, b.init("model/bn2/batchnorm/mul:0", gamma)], name="model/bn2/batchnorm/mul_1")
    x = b.node("Add", [x, b.init("model/bn2/batchnorm/sub:0", b.small((12,)))], name="model/bn2/batchnorm/add_1")
    x = b.node("Relu", [x], name="model/re_lu/Relu")
    x = b.node("Transpose", [x], name="model/conv3/Conv2D__28", perm=NHWC_TO_NCHW)
    x = b.bn(_tf_conv(b, x, 12, 10, "model/conv3"), 10, "model/bn3/FusedBatchNormV3")           # 10x6x6
    x = b.node("Relu", [x], name="model/bn3/Relu")
    x = b.node("Transpose", [x], name="model/bn3/Relu__36", perm=NCHW_TO_NHWC)
    x = b.node("Reshape", [x, b.init("model/flatten/Const:0", _i64([-1, 6 * 6 * 10]), np.int64)],
               name="model/flatten/Reshape")
    x = b.node("Relu", [_tf_dense(b, x, 6 * 6 * 10, 16, "model/dense")], name="model/dense/Relu")
    x = _tf_dense(b, x, 16, 10, "model/dense_1")
    b.node("Softmax", [x], name="model/dense_1/Softmax", outputs=["dense_1"], axis=-1)
    return b.model("tf2onnx", [_vi("input_1", ["unk__0", 12, 12, 3])], [_vi("dense_1", ["unk__0", 10])], 13,
                   tf_nhwc_chain.__doc__)


def tf_nhwc_residual(seed: int = 21) -> onnx.ModelProto:
    """tf2onnx NHWC residual stream: a conv block and a ConvNeXt-like MatMul MLP added back in NHWC."""
    b = _Builder(seed)
    x = b.node("Transpose", ["input_1"], name="model/stem/Conv2D__6", perm=NHWC_TO_NCHW)
    x = b.node("Relu", [_tf_conv(b, x, 3, 8, "model/stem")], name="model/stem/Relu")             # 8x8x8
    s = b.node("Transpose", [x], name="model/stem/Relu__10", perm=NCHW_TO_NHWC)                  # 8x8x8 NHWC
    y = b.node("Transpose", [s], name="model/block/conv_a/Conv2D__14", perm=NHWC_TO_NCHW)
    y = b.node("Relu", [_tf_conv(b, y, 8, 8, "model/block/conv_a")], name="model/block/conv_a/Relu")
    y = _tf_conv(b, y, 8, 8, "model/block/conv_b")
    y = b.node("Transpose", [y], name="model/block/conv_b/BiasAdd__22", perm=NCHW_TO_NHWC)
    s = b.node("Relu", [b.node("Add", [s, y], name="model/block/add")], name="model/block/Relu")
    h = b.node("Relu", [_tf_dense(b, s, 8, 16, "model/mlp/pw1")], name="model/mlp/Relu")         # channel-last
    s = b.node("Add", [s, _tf_dense(b, h, 16, 8, "model/mlp/pw2")], name="model/mlp/add")
    x = b.node("ReduceMean", [s], name="model/gap/Mean", axes=[1, 2], keepdims=0)                # N x 8
    x = _tf_dense(b, x, 8, 10, "model/dense")
    b.node("Softmax", [x], name="model/dense/Softmax", outputs=["dense"], axis=-1)
    return b.model("tf2onnx", [_vi("input_1", ["unk__0", 8, 8, 3])], [_vi("dense", ["unk__0", 10])], 13,
                   tf_nhwc_residual.__doc__)


def _c2_bn(b: _Builder, x: str, c: int, name: str) -> str:
    """Caffe2 SpatialBN: BatchNormalization-7 with all five inputs and ``spatial``."""
    out = b.bn(x, c, name)
    b.nodes[-1].attribute.extend([onnx.helper.make_attribute("spatial", 1),
                                  onnx.helper.make_attribute("momentum", 0.9)])
    return out


def caffe2_resnet(seed: int = 22) -> onnx.ModelProto:
    """Caffe2 ResNet-like: LRN stem, Sum residuals (two and three inputs), branch Concat, Dropout, Gemm."""
    b = _Builder(seed)
    x = b.node("Relu", [_c2_bn(b, b.conv("data", 3, 8, 3, "conv1", pad=1), 8, "conv1_spatbn")],
               name="conv1_relu")                                                                # 8x16x16
    x = b.node("MaxPool", [x], name="pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 8x8x8
    x = b.node("LRN", [x], name="pool1_norm", size=5, alpha=1e-4, beta=0.75, bias=1.0)
    s = b.node("Relu", [b.conv(x, 8, 8, 1, "conv2_reduce")], name="conv2_reduce_relu")
    a = b.node("Relu", [_c2_bn(b, b.conv(s, 8, 8, 3, "res2_a", pad=1), 8, "res2_a_bn")], name="res2_a_relu")
    a = _c2_bn(b, b.conv(a, 8, 8, 3, "res2_b", pad=1), 8, "res2_b_bn")
    s = b.node("Relu", [b.node("Sum", [s, a], name="res2_sum")], name="res2_relu")
    p = _c2_bn(b, b.conv(s, 8, 8, 1, "res3_p"), 8, "res3_p_bn")
    q = b.node("Relu", [b.conv(s, 8, 8, 3, "res3_q1", pad=1)], name="res3_q1_relu")
    q = b.conv(q, 8, 8, 3, "res3_q2", pad=1)
    s = b.node("Relu", [b.node("Sum", [s, p, q], name="res3_sum")], name="res3_relu")
    c1 = b.node("Relu", [b.conv(s, 8, 6, 1, "branch_1x1")], name="branch_1x1_relu")
    c2 = b.node("Relu", [b.conv(s, 8, 6, 3, "branch_3x3", pad=1)], name="branch_3x3_relu")
    x = b.node("Concat", [c1, c2], name="concat", axis=1)                                        # 12x8x8
    x = b.node("Dropout", [x], name="dropout", n_out=2, ratio=0.5)[0]
    x = b.node("Relu", [b.conv(x, 12, 16, 1, "conv_last")], name="conv_last_relu")               # 16x8x8
    x = b.node("AveragePool", [x], name="pool_last", kernel_shape=[8, 8], strides=[1, 1])        # 16x1x1
    x = b.gemm(b.node("Flatten", [x], name="flatten", axis=1), 16, 10, "pred")
    b.node("Softmax", [x], name="softmax", outputs=["softmax"], axis=1)
    return b.model("caffe2_net", [_vi("data", [1, 3, 16, 16])], [_vi("softmax", [1, 10])], 8,
                   caffe2_resnet.__doc__, ir_version=3, initializers_as_inputs=True)


def cntk_pad_times(seed: int = 23) -> onnx.ModelProto:
    """CNTK: Pad -> bias-less Conv -> Plus [C,1,1] (-> BN) -> Relu -> MaxPool, twice, then Times (Reshape + MatMul)."""
    b = _Builder(seed)
    x, cin = "Input3", 1
    for i, (cout, k, bn) in enumerate(((8, 5, False), (16, 3, True)), start=1):
        x = b.node("Pad", [x], name=f"Pad{i}", mode="constant", value=0.0, pads=[0, 0, k // 2, k // 2] * 2)
        x = b.node("Conv", [x, b.init(f"Parameter{i}", b.he((cout, cin, k, k), cin * k * k))],
                   name=f"Convolution{i}", kernel_shape=[k, k], strides=[1, 1], group=1, dilations=[1, 1])
        x = b.node("Add", [x, b.init(f"Parameter{i}_b", b.small((cout, 1, 1)))], name=f"Plus{i}")
        if bn:
            x = _c2_bn(b, x, cout, f"BatchNormalization{i}")
        x = b.node("Relu", [x], name=f"ReLU{i}")
        x = b.node("MaxPool", [x], name=f"Pooling{i}", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
        cin = cout                                                                                # 8x8x8, 16x4x4
    flat = 16 * 4 * 4
    x = b.node("Reshape", [x, b.init("Times_reshape0_shape", _i64([1, flat]), np.int64)], name="Times_reshape0")
    w = b.node("Reshape", [b.init("Parameter3", b.small((16, 4, 4, 32), np.sqrt(2.0 / flat))),
                           b.init("Times_reshape1_shape", _i64([flat, 32]), np.int64)], name="Times_reshape1")
    x = b.node("Add", [b.node("MatMul", [x, w], name="Times1"), b.init("Parameter3_b", b.small((1, 32), 0.05))],
               name="Plus3")
    x = b.node("MatMul", [b.node("Relu", [x], name="ReLU3"), b.init("Parameter4", b.small((32, 10), 0.2))],
               name="Times2")
    b.node("Add", [x, b.init("Parameter4_b", b.small((1, 10), 0.05))], name="Plus4", outputs=["Plus4_Output_0"])
    return b.model("CNTKGraph", [_vi("Input3", [1, 1, 16, 16])], [_vi("Plus4_Output_0", [1, 10])], 8,
                   cntk_pad_times.__doc__, ir_version=3, initializers_as_inputs=True)


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "tf_nhwc_chain": tf_nhwc_chain,
    "tf_nhwc_residual": tf_nhwc_residual,
    "caffe2_resnet": caffe2_resnet,
    "cntk_pad_times": cntk_pad_times,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the exporter-pattern test models as OUT_DIR/<name>.onnx.")
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, build in MODELS.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, os.path.join(args.out_dir, f"{name}.onnx"))
        print(f"{name}.onnx  opset {model.opset_import[0].version}  IR {model.ir_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
