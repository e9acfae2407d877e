"""Tiny random-weight versions of common CNN topologies, exported by both PyTorch ONNX exporters.

Every architecture is written twice: ``<name>.ts.onnx`` by the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, opset 17) and ``<name>.dynamo.onnx`` by the dynamo
exporter (``dynamo=True``, opset 18, which bakes channel counts into Reshape shapes), both with a
dynamic batch axis ``N``. ``<name>.npz`` holds 64 random calibration samples keyed by input name
(shared by both files), so the tests need no torch.

BatchNorm layers get random affine parameters and running statistics measured on random data, so
they are non-trivial in eval mode. Inputs are small (3x32x32 images, widths 8-64) so every file
stays well under 200 KiB.

    pip install -e ".[torch]"
    python sample_models/zoo/build.py [--only NAME ...]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
SAMPLES = 64
IMAGE = (3, 32, 32)


# --------------------------------------------------------------------------- building blocks
def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation (none when ``act`` is None)."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class Classifier(nn.Sequential):
    """Global average pool, flatten, linear."""

    def __init__(self, c: int, classes: int = 10):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


# --------------------------------------------------------------------------- VGG
def vgg_bn() -> nn.Module:
    cfg, layers, cin = [16, 16, "M", 24, 24, "M", 32], [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers, Classifier(cin))


# --------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
        self.short = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups),
                                  conv_bn(mid, cout, 1, act=None))
        self.short = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def resnet_basic() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16), BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32),
                         Classifier(32))


def resnet_bottleneck() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16), Bottleneck(16, 8, 32), Bottleneck(32, 8, 32), Bottleneck(32, 16, 32, 2),
                         Classifier(32))


def resnext() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16), Bottleneck(16, 32, 32, groups=4), Bottleneck(32, 32, 32, 2, groups=4),
                         Classifier(32))


# --------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1):
        super().__init__()
        hid = cin * expand
        self.body = nn.Sequential(conv_bn(cin, hid, 1, act=nn.ReLU6), conv_bn(hid, hid, 3, stride, hid, act=nn.ReLU6),
                                  conv_bn(hid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.ReLU6), InvertedResidual(16, 16, 2), InvertedResidual(16, 24, 2, 2),
                         InvertedResidual(24, 24, 2), conv_bn(24, 32, 1, act=nn.ReLU6),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))


# --------------------------------------------------------------------------- SqueezeNet
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


def squeezenet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                         Fire(16, 8, 16), Fire(32, 8, 16), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 8, 16),
                         nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


# --------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
                                  nn.BatchNorm2d(2 * growth), nn.ReLU(),
                                  nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet() -> nn.Module:
    g = 8
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                         DenseLayer(16, g), DenseLayer(24, g), DenseLayer(32, g),
                         nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 20, 1, bias=False), nn.AvgPool2d(2),
                         DenseLayer(20, g), DenseLayer(28, g),
                         nn.BatchNorm2d(36), nn.ReLU(), Classifier(36))


# --------------------------------------------------------------------------- EfficientNet
class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // r, 1), nn.SiLU(), nn.Conv2d(c // r, c, 1),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1):
        super().__init__()
        hid = cin * expand
        layers = [conv_bn(cin, hid, 1, act=nn.SiLU)] if expand != 1 else []
        layers += [conv_bn(hid, hid, 3, stride, hid, act=nn.SiLU), SqueezeExcite(hid), conv_bn(hid, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def efficientnet() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.SiLU), MBConv(16, 16, 1), MBConv(16, 24, 2, 2), MBConv(24, 24, 2),
                         conv_bn(24, 32, 1, act=nn.SiLU), Classifier(32))


# --------------------------------------------------------------------------- U-Net
def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class UNet(nn.Module):
    """Encoder-decoder with skip concats; ConvTranspose and bilinear Resize upsampling; one GroupNorm."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = double_conv(3, 8), double_conv(8, 16)
        self.mid = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.GroupNorm(4, 32), nn.ReLU(),
                                 conv_bn(32, 32))
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec2 = double_conv(32, 16)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(16, 8, 1))
        self.dec1 = double_conv(16, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


# --------------------------------------------------------------------------- YOLO (v8-style)
def cbs(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return conv_bn(cin, cout, k, s, act=nn.SiLU)


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int = 1):
        super().__init__()
        self.c = cout // 2
        self.cv1 = cbs(cin, 2 * self.c)
        self.m = nn.ModuleList(nn.Sequential(cbs(self.c, self.c, 3), cbs(self.c, self.c, 3)) for _ in range(n))
        self.cv2 = cbs((2 + n) * self.c, cout)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1, self.cv2 = cbs(cin, cin // 2), cbs(cin * 2, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Yolo(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(cbs(3, 16, 3, 2), cbs(16, 24, 3, 2), C2f(24, 24))
        self.down = nn.Sequential(cbs(24, 32, 3, 2), C2f(32, 32), SPPF(32, 32))
        self.head_p3 = nn.Sequential(cbs(24, 16, 3), nn.Conv2d(16, 4 + classes, 1))
        self.head_p4 = nn.Sequential(cbs(32, 16, 3), nn.Conv2d(16, 4 + classes, 1))

    def forward(self, x):
        p3 = self.stem(x)
        p4 = self.down(p3)
        return self.head_p3(p3), self.head_p4(p4)


# --------------------------------------------------------------------------- ConvNeXt
class ChannelsLast(nn.Module):
    """Apply a channel-last module to an NCHW tensor (permute, apply, permute back)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.gamma = nn.Parameter(torch.empty(c).uniform_(0.5, 1.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class SpatialMean(nn.Module):
    """Mean over H and W (the ConvNeXt head; pooling + flatten after channel-last ops exports as as_strided)."""

    def forward(self, x):
        return x.mean((2, 3))


def convnext() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 4, 4), ChannelsLast(nn.LayerNorm(16, eps=1e-6)), ConvNeXtBlock(16, 64),
                         ChannelsLast(nn.LayerNorm(16, eps=1e-6)), nn.Conv2d(16, 32, 2, 2), ConvNeXtBlock(32, 64),
                         SpatialMean(), nn.LayerNorm(32, eps=1e-6), nn.Linear(32, 10))


# --------------------------------------------------------------------------- ShuffleNetV2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        branch = cout // 2
        self.stride = stride
        self.left = (nn.Sequential(conv_bn(cin, cin, 3, stride, cin, act=None), conv_bn(cin, branch, 1))
                     if stride > 1 else None)
        src = cin if stride > 1 else branch
        self.right = nn.Sequential(conv_bn(src, branch, 1), conv_bn(branch, branch, 3, stride, branch, act=None),
                                   conv_bn(branch, branch, 1))

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, 1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out, 2)


def shufflenet() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16, 3, 2), ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1), ShuffleUnit(32, 32, 1),
                         conv_bn(32, 32, 1), Classifier(32))


# --------------------------------------------------------------------------- TCN (Conv1d)
class TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.pad = 2 * dilation
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=self.pad, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=self.pad, dilation=dilation)
        self.down = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        y = F.relu(self.conv1(x)[:, :, :-self.pad])
        y = F.relu(self.conv2(y)[:, :, :-self.pad])
        return F.relu(y + self.down(x))


class TCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(TemporalBlock(8, 16, 1), TemporalBlock(16, 16, 2), TemporalBlock(16, 24, 4))
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(self.blocks(x)[:, :, -1])


# --------------------------------------------------------------------------- MLP and two inputs
def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 24),
                         nn.Tanh(), nn.Linear(24, 10))


class TwoInput(nn.Module):
    """An image branch and a metadata branch, fused by concatenation; logits and an embedding out."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 24, 3, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.side = nn.Sequential(nn.Linear(12, 16), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(40, 32), nn.ReLU())
        self.logits, self.embed = nn.Linear(32, 10), nn.Linear(32, 8)

    def forward(self, image, meta):
        h = self.fuse(torch.cat([self.image(image), self.side(meta)], 1))
        return self.logits(h), self.embed(h)


# --------------------------------------------------------------------------- registry
class Arch:
    """One zoo entry: a module factory, input names and per-sample shapes, output names."""

    def __init__(self, make: Callable[[], nn.Module], inputs: dict[str, tuple[int, ...]] | None = None,
                 outputs: tuple[str, ...] = ("logits",)):
        self.make, self.inputs, self.outputs = make, inputs or {"input": IMAGE}, outputs


ZOO: dict[str, Arch] = {
    "vgg_bn": Arch(vgg_bn),
    "resnet_basic": Arch(resnet_basic),
    "resnet_bottleneck": Arch(resnet_bottleneck),
    "resnext": Arch(resnext),
    "mobilenet_v2": Arch(mobilenet_v2),
    "squeezenet": Arch(squeezenet),
    "densenet": Arch(densenet),
    "efficientnet": Arch(efficientnet),
    "unet": Arch(UNet, outputs=("mask",)),
    "yolo": Arch(Yolo, outputs=("p3", "p4")),
    "convnext": Arch(convnext),
    "shufflenet": Arch(shufflenet),
    "tcn": Arch(TCN, {"series": (8, 48)}),
    "mlp": Arch(mlp, {"features": (64,)}),
    "two_input": Arch(TwoInput, {"image": IMAGE, "meta": (12,)}, ("logits", "embedding")),
}


# --------------------------------------------------------------------------- weights, data, export
def randomise(model: nn.Module, data: tuple[torch.Tensor, ...], seed: int) -> nn.Module:
    """Random affine BN/LN parameters, BN running statistics measured on ``data``, then eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the batches below
        model.train()
        for i in range(0, len(data[0]), 16):
            model(*(d[i:i + 16] for d in data))
    return model.eval()


def calibration_data(arch: Arch, seed: int) -> dict[str, np.ndarray]:
    """SAMPLES smooth random samples per input (low-resolution noise upsampled, plus fine noise), float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in arch.inputs.items():
        if len(shape) == 3:
            coarse = torch.from_numpy(rng.standard_normal((SAMPLES, shape[0], shape[1] // 4, shape[2] // 4)))
            x = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False).numpy()
        else:
            x = rng.standard_normal((SAMPLES, *shape))
        x = x + 0.1 * rng.standard_normal(x.shape)
        out[name] = (np.round(x * 16) / 16).astype(np.float32)  # coarse levels keep the .npz small
    return out


def export(name: str, arch: Arch, model: nn.Module, dynamo: bool) -> Path:
    path = HERE / f"{name}.{'dynamo' if dynamo else 'ts'}.onnx"
    example = tuple(torch.randn(2, *shape) for shape in arch.inputs.values())
    in_names, out_names = list(arch.inputs), list(arch.outputs)
    if dynamo:
        batch = torch.export.Dim("N", min=1, max=1024)
        torch.onnx.export(model, example, str(path), dynamo=True, opset_version=18, verbose=False, input_names=in_names,
                          output_names=out_names, dynamic_shapes=tuple({0: batch} for _ in in_names),
                          external_data=False)
    else:
        axes = {n: {0: "N"} for n in in_names + out_names}
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=in_names,
                          output_names=out_names, dynamic_axes=axes)
    strip_metadata(path)
    return path


def strip_metadata(path: Path) -> None:
    """Drop per-node stack traces and doc strings (local paths): smaller, reproducible files."""
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(proto, str(path))


def build(name: str) -> list[Path]:
    arch = ZOO[name]
    seed = sorted(ZOO).index(name)
    torch.manual_seed(seed)
    data = calibration_data(arch, seed)
    model = randomise(arch.make(), tuple(torch.from_numpy(v) for v in data.values()), seed)
    npz = HERE / f"{name}.npz"
    np.savez_compressed(npz, **data)
    with torch.no_grad():
        return [export(name, arch, model, dynamo) for dynamo in (False, True)] + [npz]


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(ZOO), help="build only these")
    args = ap.parse_args(argv)
    for name in args.only or ZOO:
        for path in build(name):
            print(f"{path.relative_to(HERE.parent)}  {path.stat().st_size / 1024:6.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
