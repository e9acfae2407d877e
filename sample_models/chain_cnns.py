"""Small hand-built chain-topology ONNX models for the test suite.

Every model is built with onnx.helper + numpy (no torch) from seeded random
weights, passes ``onnx.checker.check_model(full_check=True)`` and runs in
onnxruntime.  Feature maps are at most 16x16 with at most 16 channels.

=====================  =====  ======  ==========================================================
file (chains/)         opset  batch   what it covers
=====================  =====  ======  ==========================================================
a_conv_bn_gap          13     N       Conv->BatchNormalization->Relu->MaxPool->Conv->Relu->
                                      GlobalAveragePool->Flatten->Gemm
b_bias_add_sigmoid     13     N       Conv (no bias)->Add [C,1,1]->LeakyRelu->AveragePool->Conv->
                                      Mul [C,1,1]->Sigmoid->Flatten->Gemm (channel owns H*W columns)
c_mlp_gemm             11     N       Gemm->Relu->Gemm (transB=0)->Tanh->Gemm MLP, no conv
d_cntk_matmul          7      1       CNTK style: input ``Input3``, Conv auto_pad=SAME_UPPER, Add bias
                                      [C,1,1], Relu, MaxPool, Reshape [1,C*H*W], MatMul+Add MLP.
                                      IR version 3: initializers are also listed as graph inputs
e_activations          17     N       Conv->Pad(reflect)->Clip(min/max inputs)->HardSwish->Elu->
                                      Dropout->Identity->Cast(float->float)->LpPool->PRelu[C,1,1]->
                                      Softplus->Selu->GELU(Erf)->Conv->Relu->GAP->Flatten->Gemm
f_reshaped_weights     13     N       conv weights reach the Conv through Reshape+Transpose of
                                      initializers (TF HWIO layout); flatten through
                                      Shape->Gather->Unsqueeze->Concat->Reshape
external/g_external    13     1       Conv->BN->Relu->Conv->Relu->MaxPool->Conv->Relu->GAP->Flatten->
                                      Gemm, tensors in external data ``g_external.onnx.data``
h_blocked              13     N       Conv->Relu->Softmax(axis=1)->Conv->Relu->channel shuffle
                                      (Reshape/Transpose/Reshape)->MaxPool->Conv->Relu->Conv; the last
                                      Conv's output is a graph output (``features``) and feeds
                                      Relu->GAP->Flatten->Gemm (``logits``)
=====================  =====  ======  ==========================================================

Expected prunability: in (h) conv1 is blocked by the Softmax over channels,
conv2 by the channel shuffle and conv4 by the graph output; only conv3 (and
nothing else) is freely prunable.

Regenerate the committed files with::

    python sample_models/chain_cnns.py [--out-dir sample_models/chains]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCER = "onnxprune-sample-models"
Dim = Union[int, str]


# --------------------------------------------------------------------------- helpers
class _Builder:
    """Tiny graph builder: collects nodes and initializers, draws seeded weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self._names: Dict[str, int] = {}

    def uniq(self, base: str) -> str:
        k = self._names.get(base, 0)
        self._names[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    def init(self, name: str, arr: np.ndarray, dtype=np.float32) -> str:
        # np.array (not np.ascontiguousarray, which turns 0-d scalars into 1-d)
        self.inits.append(numpy_helper.from_array(np.array(arr, dtype=dtype, order="C"), name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: Optional[str] = None,
             n_out: int = 1, outputs: Optional[Sequence[str]] = None, **attrs) -> Union[str, List[str]]:
        name = self.uniq(name or op.lower())
        if outputs is None:
            outputs = [name] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    # weight factories ------------------------------------------------------
    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def small(self, shape: Sequence[int], scale: float = 0.1) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # layers ------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int, name: str, bias: bool = True,
             pad: Optional[int] = None, **attrs) -> str:
        w = self.init(f"{name}.weight", self.he((cout, cin, k, k), cin * k * k))
        ins = [x, w]
        if bias:
            ins.append(self.init(f"{name}.bias", self.small((cout,))))
        if pad is not None:
            attrs["pads"] = [pad] * 4
        return self.node("Conv", ins, name=name, kernel_shape=[k, k], **attrs)

    def bn(self, x: str, c: int, name: str) -> str:
        r = self.rng
        ins = [x,
               self.init(f"{name}.scale", r.uniform(0.5, 1.5, c)),
               self.init(f"{name}.bias", r.normal(0.0, 0.1, c)),
               self.init(f"{name}.running_mean", r.normal(0.0, 0.1, c)),
               self.init(f"{name}.running_var", r.uniform(0.5, 1.5, c))]
        return self.node("BatchNormalization", ins, name=name, epsilon=1e-5)

    def gemm(self, x: str, fin: int, fout: int, name: str, out: Optional[str] = None,
             trans_b: bool = True) -> str:
        wshape = (fout, fin) if trans_b else (fin, fout)
        w = self.init(f"{name}.weight", self.small(wshape, np.sqrt(1.0 / fin)))
        b = self.init(f"{name}.bias", self.small((fout,), 0.05))
        return self.node("Gemm", [x, w, b], name=name, outputs=[out] if out else None,
                         transB=1 if trans_b else 0)

    def model(self, graph_name: str, inputs: List[onnx.ValueInfoProto],
              outputs: List[onnx.ValueInfoProto], opset: int, doc: str,
              ir_version: Optional[int] = None,
              initializers_as_inputs: bool = False) -> onnx.ModelProto:
        graph_inputs = list(inputs)
        if initializers_as_inputs:  # IR < 4 requires this (e.g. CNTK exports)
            graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in self.inits]
        graph = helper.make_graph(self.nodes, graph_name, graph_inputs, outputs,
                                  initializer=self.inits)
        model = helper.make_model_gen_version(graph, producer_name=PRODUCER,
                                              opset_imports=[helper.make_opsetid("", opset)])
        if ir_version is not None:
            model.ir_version = ir_version
        model.doc_string = doc
        return model


def _vi(name: str, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


# --------------------------------------------------------------------------- (a)
def chain_a_conv_bn_gap(seed: int = 0, batch: Dim = "N") -> onnx.ModelProto:
    """Conv->BN->Relu->MaxPool->Conv->Relu->GlobalAveragePool->Flatten->Gemm (opset 13)."""
    b = _Builder(seed)
    x = b.conv("input", 3, 8, 3, "conv1", pad=1)                    # 8x16x16
    x = b.bn(x, 8, "bn1")
    x = b.node("Relu", [x], name="relu1")
    x = b.node("MaxPool", [x], name="pool1", kernel_shape=[2, 2], strides=[2, 2])  # 8x8x8
    x = b.conv(x, 8, 12, 3, "conv2", pad=1)                          # 12x8x8
    x = b.node("Relu", [x], name="relu2")
    x = b.node("GlobalAveragePool", [x], name="gap")                 # 12x1x1
    x = b.node("Flatten", [x], name="flatten", axis=1)               # 12
    b.gemm(x, 12, 10, "fc", out="logits")
    return b.model("chain_a_conv_bn_gap", [_vi("input", [batch, 3, 16, 16])],
                   [_vi("logits", [batch, 10])], 13, chain_a_conv_bn_gap.__doc__)


# --------------------------------------------------------------------------- (b)
def chain_b_bias_add_sigmoid(seed: int = 1, batch: Dim = "N") -> onnx.ModelProto:
    """Conv(no bias)->Add[C,1,1]->LeakyRelu->AveragePool->Conv->Mul[C,1,1]->Sigmoid->Flatten->Gemm.

    The Flatten keeps the spatial map, so each channel of conv2 owns H*W = 36
    consecutive Gemm input columns (opset 13).
    """
    b = _Builder(seed)
    x = b.conv("input", 3, 8, 3, "conv1", bias=False, pad=1)        # 8x12x12
    x = b.node("Add", [x, b.init("conv1.bias_chw", b.small((8, 1, 1)))], name="add_bias")
    x = b.node("LeakyRelu", [x], name="leaky", alpha=0.1)
    x = b.node("AveragePool", [x], name="avgpool", kernel_shape=[2, 2], strides=[2, 2])  # 8x6x6
    x = b.conv(x, 8, 6, 3, "conv2", pad=1)                            # 6x6x6
    scale = b.rng.uniform(0.5, 1.5, (6, 1, 1)).astype(np.float32)
    x = b.node("Mul", [x, b.init("conv2.scale_chw", scale)], name="mul_scale")
    x = b.node("Sigmoid", [x], name="sigmoid")
    x = b.node("Flatten", [x], name="flatten", axis=1)                # 216
    b.gemm(x, 6 * 6 * 6, 10, "fc", out="logits")
    return b.model("chain_b_bias_add_sigmoid", [_vi("input", [batch, 3, 12, 12])],
                   [_vi("logits", [batch, 10])], 13, chain_b_bias_add_sigmoid.__doc__)


# --------------------------------------------------------------------------- (c)
def chain_c_mlp_gemm(seed: int = 2, batch: Dim = "N") -> onnx.ModelProto:
    """Gemm(transB=1)->Relu->Gemm(transB=0)->Tanh->Gemm(transB=1) MLP, no conv (opset 11)."""
    b = _Builder(seed)
    x = b.gemm("input", 32, 16, "fc1")
    x = b.node("Relu", [x], name="relu1")
    x = b.gemm(x, 16, 12, "fc2", trans_b=False)
    x = b.node("Tanh", [x], name="tanh2")
    b.gemm(x, 12, 10, "fc3", out="logits")
    return b.model("chain_c_mlp_gemm", [_vi("input", [batch, 32])],
                   [_vi("logits", [batch, 10])], 11, chain_c_mlp_gemm.__doc__)


# --------------------------------------------------------------------------- (d)
def chain_d_cntk_matmul(seed: int = 3) -> onnx.ModelProto:
    """CNTK-style CNN + MatMul/Add MLP at opset 7, fixed batch 1, input ``Input3``.

    Conv(auto_pad=SAME_UPPER, no bias)->Add[C,1,1]->Relu->MaxPool, twice, then
    Reshape to [1, C*H*W] -> MatMul -> Add -> Relu -> MatMul -> Add.  Saved
    with IR version 3, where every initializer is also a graph input.
    """
    b = _Builder(seed)
    x = "Input3"
    cin, h = 1, 16
    for i, cout in enumerate((8, 16), start=1):
        w = b.init(f"Parameter{i}", b.he((cout, cin, 5, 5), cin * 25))
        x = b.node("Conv", [x, w], name=f"Convolution{i}", kernel_shape=[5, 5],
                   strides=[1, 1], auto_pad="SAME_UPPER", group=1, dilations=[1, 1])
        x = b.node("Add", [x, b.init(f"Parameter{i}_bias", b.small((cout, 1, 1)))], name=f"Plus{i}")
        x = b.node("Relu", [x], name=f"ReLU{i}")
        x = b.node("MaxPool", [x], name=f"Pooling{i}", kernel_shape=[2, 2], strides=[2, 2],
                   pads=[0, 0, 0, 0], auto_pad="NOTSET")
        cin, h = cout, h // 2                                          # 8x8x8, then 16x4x4
    flat = cin * h * h                                                 # 256
    x = b.node("Reshape", [x, b.init("Pooling2_Output_0_reshape0_shape", _i64([1, flat]), np.int64)],
               name="Times_reshape0")
    x = b.node("MatMul", [x, b.init("Parameter3", b.small((flat, 32), np.sqrt(2.0 / flat)))],
               name="Times1")
    x = b.node("Add", [x, b.init("Parameter3_bias", b.small((1, 32), 0.05))], name="Plus3")
    x = b.node("Relu", [x], name="ReLU3")
    x = b.node("MatMul", [x, b.init("Parameter4", b.small((32, 10), np.sqrt(1.0 / 32)))],
               name="Times2")
    b.node("Add", [x, b.init("Parameter4_bias", b.small((1, 10), 0.05))], name="Plus214",
           outputs=["Plus214_Output_0"])
    return b.model("CNTKGraph", [_vi("Input3", [1, 1, 16, 16])],
                   [_vi("Plus214_Output_0", [1, 10])], 7, chain_d_cntk_matmul.__doc__,
                   ir_version=3, initializers_as_inputs=True)


# --------------------------------------------------------------------------- (e)
def chain_e_activations(seed: int = 4, batch: Dim = "N") -> onnx.ModelProto:
    """A zoo of element-wise / shape-preserving ops between two convs (opset 17).

    Conv->Pad(reflect, spatial)->Clip(min,max inputs)->HardSwish->Elu->Dropout->
    Identity->Cast(float->float)->LpPool(p=2)->PRelu(per-channel slope)->Softplus->
    Selu->GELU as x*0.5*(1+Erf(x/sqrt 2))->Conv->Relu->GAP->Flatten->Gemm.
    """
    b = _Builder(seed)
    c = 12
    x = b.conv("input", 3, c, 3, "conv1")                                # 12x14x14
    x = b.node("Pad", [x, b.init("pad1.pads", _i64([0, 0, 1, 1, 0, 0, 1, 1]), np.int64)],
               name="pad1", mode="reflect")                              # 12x16x16
    x = b.node("Clip", [x, b.init("clip.min", np.float32(-3.0)), b.init("clip.max", np.float32(6.0))],
               name="clip")
    x = b.node("HardSwish", [x], name="hardswish")
    x = b.node("Elu", [x], name="elu", alpha=1.0)
    x = b.node("Dropout", [x], name="dropout")
    x = b.node("Identity", [x], name="identity")
    x = b.node("Cast", [x], name="cast", to=TensorProto.FLOAT)
    x = b.node("LpPool", [x], name="lppool", kernel_shape=[2, 2], strides=[2, 2], p=2)  # 12x8x8
    slope = b.rng.uniform(0.05, 0.3, (c, 1, 1)).astype(np.float32)
    x = b.node("PRelu", [x, b.init("prelu.slope", slope)], name="prelu")
    x = b.node("Softplus", [x], name="softplus")
    x = b.node("Selu", [x], name="selu")
    # GELU(x) = x * 0.5 * (1 + erf(x / sqrt(2)))
    t = b.node("Div", [x, b.init("gelu.sqrt2", np.float32(np.sqrt(2.0)))], name="gelu_div")
    t = b.node("Erf", [t], name="gelu_erf")
    t = b.node("Add", [t, b.init("gelu.one", np.float32(1.0))], name="gelu_add")
    t = b.node("Mul", [x, t], name="gelu_mul")
    x = b.node("Mul", [t, b.init("gelu.half", np.float32(0.5))], name="gelu_half")
    x = b.conv(x, c, 8, 3, "conv2", pad=1)                               # 8x8x8
    x = b.node("Relu", [x], name="relu2")
    x = b.node("GlobalAveragePool", [x], name="gap")
    x = b.node("Flatten", [x], name="flatten", axis=1)
    b.gemm(x, 8, 10, "fc", out="logits")
    return b.model("chain_e_activations", [_vi("input", [batch, 3, 16, 16])],
                   [_vi("logits", [batch, 10])], 17, chain_e_activations.__doc__)


# --------------------------------------------------------------------------- (f)
def chain_f_reshaped_weights(seed: int = 5, batch: Dim = "N") -> onnx.ModelProto:
    """Conv weights reach the Conv through Reshape/Transpose of initializers (opset 13).

    conv1.weight: flat [216] initializer -> Reshape [3,3,3,8] (HWIO) ->
    Transpose perm [3,2,0,1] -> OIHW [8,3,3,3].  conv2.weight: HWIO [3,3,8,8]
    initializer -> Transpose.  The flatten before the Gemm is
    Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])).
    """
    b = _Builder(seed)
    perm = [3, 2, 0, 1]  # HWIO -> OIHW
    w1 = b.he((8, 3, 3, 3), 27)                                           # OIHW values
    w1_flat = w1.transpose(2, 3, 1, 0).reshape(-1)                        # HWIO, flattened
    r = b.node("Reshape", [b.init("conv1.weight_flat", w1_flat),
                           b.init("conv1.weight_hwio_shape", _i64([3, 3, 3, 8]), np.int64)],
               name="conv1_weight_reshape")
    w1_oihw = b.node("Transpose", [r], name="conv1_weight_transpose", perm=perm)
    x = b.node("Conv", ["input", w1_oihw, b.init("conv1.bias", b.small((8,)))], name="conv1",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])                    # 8x12x12
    x = b.node("Relu", [x], name="relu1")
    x = b.node("MaxPool", [x], name="pool1", kernel_shape=[2, 2], strides=[2, 2])  # 8x6x6
    w2 = b.he((8, 8, 3, 3), 72)
    w2_oihw = b.node("Transpose", [b.init("conv2.weight_hwio", w2.transpose(2, 3, 1, 0))],
                     name="conv2_weight_transpose", perm=perm)
    x = b.node("Conv", [x, w2_oihw, b.init("conv2.bias", b.small((8,)))], name="conv2",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])                    # 8x6x6
    x = b.node("Relu", [x], name="relu2")
    # dynamic flatten through a shape subgraph
    s = b.node("Shape", [x], name="flatten_shape")
    n = b.node("Gather", [s, b.init("flatten.idx0", _i64(0), np.int64)], name="flatten_gather", axis=0)
    n = b.node("Unsqueeze", [n, b.init("flatten.axes0", _i64([0]), np.int64)], name="flatten_unsqueeze")
    shp = b.node("Concat", [n, b.init("flatten.minus1", _i64([-1]), np.int64)], name="flatten_concat",
                 axis=0)
    x = b.node("Reshape", [x, shp], name="flatten_reshape")              # N x 288
    b.gemm(x, 8 * 6 * 6, 10, "fc", out="logits")
    return b.model("chain_f_reshaped_weights", [_vi("input", [batch, 3, 12, 12])],
                   [_vi("logits", [batch, 10])], 13, chain_f_reshaped_weights.__doc__)


# --------------------------------------------------------------------------- (g)
def chain_g_external(seed: int = 6, batch: Dim = 1) -> onnx.ModelProto:
    """Conv->BN->Relu->Conv->Relu->MaxPool->Conv->Relu->GAP->Flatten->Gemm, fixed batch 1 (opset 13).

    Written by ``main`` with its tensors in one external-data file.
    """
    b = _Builder(seed)
    x = b.conv("input", 3, 16, 3, "conv1", pad=1)                       # 16x16x16
    x = b.bn(x, 16, "bn1")
    x = b.node("Relu", [x], name="relu1")
    x = b.conv(x, 16, 16, 3, "conv2", pad=1)
    x = b.node("Relu", [x], name="relu2")
    x = b.node("MaxPool", [x], name="pool2", kernel_shape=[2, 2], strides=[2, 2])  # 16x8x8
    x = b.conv(x, 16, 12, 3, "conv3", pad=1)
    x = b.node("Relu", [x], name="relu3")
    x = b.node("GlobalAveragePool", [x], name="gap")
    x = b.node("Flatten", [x], name="flatten", axis=1)
    b.gemm(x, 12, 10, "fc", out="logits")
    return b.model("chain_g_external", [_vi("input", [batch, 3, 16, 16])],
                   [_vi("logits", [batch, 10])], 13, chain_g_external.__doc__)


# --------------------------------------------------------------------------- (h)
def chain_h_blocked(seed: int = 7, batch: Dim = "N") -> onnx.ModelProto:
    """Blocked groups and a conv output that is a graph output (opset 13).

    conv1->Relu->Softmax(axis=1) (blocks conv1) -> conv2->Relu->channel shuffle
    Reshape[0,2,4,H,W]/Transpose[0,2,1,3,4]/Reshape[0,8,H,W] (blocks conv2) ->
    MaxPool -> conv3->Relu (prunable) -> conv4, whose output ``features`` is a
    graph output (blocks conv4) and also feeds Relu->GAP->Flatten->Gemm.
    """
    b = _Builder(seed)
    x = b.conv("input", 3, 8, 3, "conv1", pad=1)                        # 8x16x16
    x = b.node("Relu", [x], name="relu1")
    x = b.node("Softmax", [x], name="softmax", axis=1)
    x = b.conv(x, 8, 8, 3, "conv2", pad=1)
    x = b.node("Relu", [x], name="relu2")
    x = b.node("Reshape", [x, b.init("shuffle.shape5", _i64([0, 2, 4, 16, 16]), np.int64)],
               name="shuffle_reshape1")
    x = b.node("Transpose", [x], name="shuffle_transpose", perm=[0, 2, 1, 3, 4])
    x = b.node("Reshape", [x, b.init("shuffle.shape4", _i64([0, 8, 16, 16]), np.int64)],
               name="shuffle_reshape2")
    x = b.node("MaxPool", [x], name="pool2", kernel_shape=[2, 2], strides=[2, 2])  # 8x8x8
    x = b.conv(x, 8, 12, 3, "conv3", pad=1)
    x = b.node("Relu", [x], name="relu3")
    w4 = b.init("conv4.weight", b.he((6, 12, 3, 3), 108))
    b4 = b.init("conv4.bias", b.small((6,)))
    feats = b.node("Conv", [x, w4, b4], name="conv4", outputs=["features"],
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1])                # 6x8x8 -> graph output
    x = b.node("Relu", [feats], name="relu4")
    x = b.node("GlobalAveragePool", [x], name="gap")
    x = b.node("Flatten", [x], name="flatten", axis=1)
    b.gemm(x, 6, 10, "fc", out="logits")
    return b.model("chain_h_blocked", [_vi("input", [batch, 3, 16, 16])],
                   [_vi("logits", [batch, 10]), _vi("features", [batch, 6, 8, 8])], 13,
                   chain_h_blocked.__doc__)


# --------------------------------------------------------------------------- registry
#: file stem -> builder; the models in EXTERNAL are written with external data under external/
MODELS: Dict[str, Callable[[], onnx.ModelProto]] = {
    "a_conv_bn_gap": chain_a_conv_bn_gap,
    "b_bias_add_sigmoid": chain_b_bias_add_sigmoid,
    "c_mlp_gemm": chain_c_mlp_gemm,
    "d_cntk_matmul": chain_d_cntk_matmul,
    "e_activations": chain_e_activations,
    "f_reshaped_weights": chain_f_reshaped_weights,
    "g_external": chain_g_external,
    "h_blocked": chain_h_blocked,
}
EXTERNAL = {"g_external"}


def model_path(name: str, out_dir: str) -> str:
    if name in EXTERNAL:
        return os.path.join(out_dir, "external", f"{name}.onnx")
    return os.path.join(out_dir, f"{name}.onnx")


def random_feed(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 inputs for the real (non-initializer) graph inputs; symbolic dims -> ``batch``."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in vi.type.tensor_type.shape.dim]
        feed[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def save_model(model: onnx.ModelProto, path: str, external: bool = False) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not external:
        onnx.save(model, path)
        return
    location = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    if os.path.exists(data_path):  # onnx appends to an existing data file
        os.remove(data_path)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=1024)
    os.chmod(data_path, 0o644)  # onnx creates the data file with mode 0600


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Write the small chain-topology test models.")
    ap.add_argument("--out-dir", default=os.path.join(here, "chains"))
    args = ap.parse_args(argv)

    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover
        ort = None

    for name, build in MODELS.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        path = model_path(name, args.out_dir)
        if ort is not None:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            outs = sess.run(None, random_feed(model))
            shapes = ", ".join(f"{o.name}{list(a.shape)}" for o, a in zip(sess.get_outputs(), outs))
        else:
            shapes = "(onnxruntime not installed, not run)"
        save_model(model, path, external=name in EXTERNAL)
        opset = model.opset_import[0].version
        size = os.path.getsize(path)
        print(f"{os.path.relpath(path, here):42s} opset {opset:2d}  IR {model.ir_version:2d}  "
              f"{size / 1024:7.1f} KiB  {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
