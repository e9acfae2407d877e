"""VGG-16 for CIFAR-10 (32x32 inputs) with random weights, built with onnx.helper + numpy.

The architecture is Table 11 of "Towards Generalized Entropic Sparsification
for CNNs" (~14.7 M parameters):

    13 x [Conv 3x3, pad 1 (+bias) -> BatchNormalization -> Relu], with MaxPool 2x2
    after blocks 2, 4, 7, 10 and 13:
        64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M
    Flatten (512) -> Gemm 512 -> 10

No torch is needed.  The weights are random but "sane": convolutions are
He-initialised, and the BatchNormalization running statistics are measured on
a fixed random batch pushed through the network (numpy im2col convolution) and
then jittered, so every channel is alive (roughly half of its pre-ReLU values
are positive) and the activations neither explode nor vanish across the 13
layers; the logits have a standard deviation of order 1 on N(0, 1) inputs.

``build_vgg16_imagenet`` builds the ImageNet variant the same way (224x224 inputs, classifier
25088 -> 4096 -> 4096 -> 1000, 138 M parameters) for benchmarks/vgg16_imagenet.py.

The .onnx file (~56 MiB) is NOT committed; regenerate it with::

    python sample_models/vgg16_cifar.py [output.onnx] [--seed 0] [--batch N]

(default output ``sample_models/vgg16_cifar.onnx``, git-ignored).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
CFG: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]
NUM_CLASSES = 10
BN_EPS = 1e-5


def _conv3x3_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 NCHW 3x3 convolution, stride 1, pad 1 (im2col + matmul)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # n,c,h,w,3,3
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * 9)
    y = cols @ w.reshape(w.shape[0], -1).T + b
    return y.reshape(n, h, wd, -1).transpose(0, 3, 1, 2)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def count_params(model: onnx.ModelProto, include_bn_stats: bool = False) -> int:
    """Number of trainable parameters (BN running mean/var excluded by default)."""
    total = 0
    for init in model.graph.initializer:
        if not include_bn_stats and (init.name.endswith(".running_mean")
                                     or init.name.endswith(".running_var")):
            continue
        total += int(np.prod(init.dims))
    return total


def build_vgg16_cifar(seed: int = 0, batch: Union[int, str] = "N",
                      calib_batch: int = 8) -> onnx.ModelProto:
    """Return the VGG-16/CIFAR-10 ModelProto (opset 13) with seeded random weights.

    ``batch`` is the first dimension of ``input``/``logits``: a symbolic name
    (default ``"N"``) or a fixed int.  ``calib_batch`` random images are used
    to set the BatchNormalization statistics.
    """
    model = build_vgg16(seed, batch, calib_batch)
    model.doc_string = ("VGG-16 for CIFAR-10 (Table 11 of 'Towards Generalized Entropic "
                        f"Sparsification for CNNs'), random weights, seed={seed}")
    return model


def build_vgg16_imagenet(seed: int = 0, batch: Union[int, str] = "N", calib_batch: int = 2) -> onnx.ModelProto:
    """VGG-16 (with BatchNormalization) for ImageNet: 224x224 inputs, classifier 25088 -> 4096 -> 4096 -> 1000
    (138 M parameters), with seeded random weights set up as :func:`build_vgg16_cifar`'s."""
    model = build_vgg16(seed, batch, calib_batch, image_size=224, hidden=(4096, 4096), num_classes=1000,
                        name="vgg16_imagenet")
    model.doc_string = f"VGG-16 (BN) for ImageNet, random weights, seed={seed}"
    return model


def build_vgg16(seed: int = 0, batch: Union[int, str] = "N", calib_batch: int = 8, *, image_size: int = 32,
                hidden: tuple[int, ...] = (), num_classes: int = NUM_CLASSES,
                name: str = "vgg16_cifar10") -> onnx.ModelProto:
    """The 13 conv layers of ``CFG`` on ``image_size`` inputs, then Flatten and a Gemm (+ Relu) per ``hidden``
    width and a last Gemm to ``num_classes`` logits; see :func:`build_vgg16_cifar`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((calib_batch, 3, image_size, image_size)).astype(np.float32)

    inits: List[onnx.TensorProto] = []
    nodes: List[onnx.NodeProto] = []

    def add_init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    cur = "input"
    cin = 3
    li = 0  # conv index
    pi = 0  # pool index
    for v in CFG:
        if v == "M":
            pi += 1
            out = f"pool{pi}"
            nodes.append(helper.make_node("MaxPool", [cur], [out], name=f"pool{pi}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x = _maxpool2(x)
            cur = out
            continue
        li += 1
        cout = int(v)
        fan_in = cin * 9
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        y = _conv3x3_same(x, w, b)
        # BatchNormalization: running stats close to the measured ones.
        mu = y.mean(axis=(0, 2, 3))
        sd = y.std(axis=(0, 2, 3)) + 1e-3
        mean = mu + 0.1 * sd * rng.standard_normal(cout)
        var = (sd ** 2) * np.exp(0.2 * rng.standard_normal(cout))
        gamma = rng.uniform(0.6, 1.4, cout)
        beta = rng.normal(0.0, 0.2, cout)
        z = (y - mean[None, :, None, None].astype(np.float32)) \
            / np.sqrt(var[None, :, None, None] + BN_EPS).astype(np.float32) \
            * gamma[None, :, None, None].astype(np.float32) + beta[None, :, None, None].astype(np.float32)
        x = np.maximum(z, 0.0).astype(np.float32)

        pre = f"conv{li}"
        add_init(f"{pre}.weight", w)
        add_init(f"{pre}.bias", b)
        add_init(f"bn{li}.scale", gamma)
        add_init(f"bn{li}.bias", beta)
        add_init(f"bn{li}.running_mean", mean)
        add_init(f"bn{li}.running_var", var)
        nodes.append(helper.make_node("Conv", [cur, f"{pre}.weight", f"{pre}.bias"], [f"conv{li}_out"],
                                      name=f"conv{li}", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[1, 1], dilations=[1, 1], group=1))
        nodes.append(helper.make_node("BatchNormalization",
                                      [f"conv{li}_out", f"bn{li}.scale", f"bn{li}.bias",
                                       f"bn{li}.running_mean", f"bn{li}.running_var"],
                                      [f"bn{li}_out"], name=f"bn{li}", epsilon=BN_EPS))
        nodes.append(helper.make_node("Relu", [f"bn{li}_out"], [f"relu{li}"], name=f"relu{li}"))
        cur = f"relu{li}"
        cin = cout

    nodes.append(helper.make_node("Flatten", [cur], ["flatten"], name="flatten", axis=1))
    cur, cin = "flatten", cin * (image_size // 32) ** 2
    for i, width in enumerate(hidden, 1):
        add_init(f"fc{i}.weight", rng.standard_normal((width, cin)) * np.sqrt(2.0 / cin))
        add_init(f"fc{i}.bias", rng.standard_normal(width) * 0.01)
        nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}_out"],
                                      name=f"fc{i}", transB=1))
        nodes.append(helper.make_node("Relu", [f"fc{i}_out"], [f"fc{i}_relu"], name=f"fc{i}_relu"))
        cur, cin = f"fc{i}_relu", width
    fw = (rng.standard_normal((num_classes, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
    fb = (rng.standard_normal(num_classes) * 0.01).astype(np.float32)
    add_init("fc.weight", fw)
    add_init("fc.bias", fb)
    nodes.append(helper.make_node("Gemm", [cur, "fc.weight", "fc.bias"], ["logits"],
                                  name="fc", alpha=1.0, beta=1.0, transB=1))

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        initializer=inits,
    )
    return helper.make_model_gen_version(
        graph, producer_name="onnxprune-sample-models",
        opset_imports=[helper.make_opsetid("", OPSET)])


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Write the random-weight VGG-16/CIFAR-10 ONNX model.")
    ap.add_argument("output", nargs="?", default=os.path.join(here, "vgg16_cifar.onnx"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", default="N",
                    help="first input dimension: a symbolic name (default N) or an integer")
    args = ap.parse_args(argv)
    batch: Union[int, str] = int(args.batch) if args.batch.isdigit() else args.batch

    model = build_vgg16_cifar(seed=args.seed, batch=batch)
    onnx.checker.check_model(model, full_check=True)
    n_params = count_params(model)
    n_convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    print(f"VGG-16/CIFAR-10: {n_convs} conv layers, {n_params:,} trainable parameters "
          f"({n_params / 1e6:.2f} M; {count_params(model, True):,} with BN running stats)")

    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        xin = np.random.default_rng(args.seed + 1).standard_normal((4, 3, 32, 32)).astype(np.float32)
        if isinstance(batch, int):
            xin = xin[:batch] if batch <= 4 else np.resize(xin, (batch, 3, 32, 32))
        out = sess.run(["logits"], {"input": xin})[0]
        print(f"logits on N(0,1) input: shape {out.shape}, std {out.std():.3f}, "
              f"finite {bool(np.isfinite(out).all())}")
    except ImportError:  # pragma: no cover
        pass

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(model, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
