"""Compact CIFAR-10 classifiers trained here: SqueezeNet-, MobileNetV2- and ShuffleNetV2-style.

The fidelity issue's compact networks (fire modules, inverted residuals with depthwise convolutions, channel
split and shuffle) at CIFAR size, trained for a few CPU epochs on the 5 000 JPEGs of
``../shared/data/cifar10/train-subset`` (random crop with 4 pixels of padding and horizontal flips, SGD with
momentum 0.9, cosine learning rate from 0.05, weight decay 5e-4, batch 64, seed 0; BatchNorm after every
convolution, folded by the exporter's eval mode or by onnxprune), with the CIFAR ResNets'
normalisation (mean 0.485,0.456,0.406, std 0.229,0.224,0.225 on 0..1 pixels, RGB, NCHW). Exported with
torch's TorchScript exporter (opset 13, dynamic batch); the small .onnx files are committed in
``sample_models/compact_cifar/``, so nothing but this script needs torch.

    python sample_models/compact_cifar.py [--only squeezenet,mobilenetv2,shufflenetv2] [--epochs 15]

Needs torch (``pip install torch==2.13.0``) and ``../shared/data/cifar10``. Prints each model's top-1 on the
10 000 test JPEGs; ``benchmarks/real_models.py --part compact`` prunes them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "compact_cifar"
CIFAR = HERE.parents[1] / "shared" / "data" / "cifar10"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_split(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every JPEG of a class-folder tree as normalised float32 N×3×32×32 and int64 labels (classes sorted)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            images.append(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0)
            labels.append(label)
    x = ((np.stack(images) - MEAN) / STD).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, np.float32), np.array(labels, np.int64)


def build(name: str):
    """The torch module of one architecture."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)

    class Fire(nn.Module):
        """SqueezeNet's fire module (squeeze 1x1, expand 1x1 and 3x3, concatenated), with BatchNorm: without it
        these few epochs do not leave chance level."""

        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.squeeze = conv_bn(cin, squeeze, 1)
            self.e1 = conv_bn(squeeze, expand, 1)
            self.e3 = conv_bn(squeeze, expand, 3)

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand=4):
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(conv_bn(cin, hidden, 1, act=nn.ReLU6),
                                      conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                                      conv_bn(hidden, cout, 1, act=None))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class ShuffleBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            half = cout // 2
            branch_in = cin if stride > 1 else cin // 2
            self.branch = nn.Sequential(conv_bn(branch_in, half, 1), conv_bn(half, half, 3, stride, half, act=None),
                                        conv_bn(half, half, 1))
            self.shortcut = (nn.Sequential(conv_bn(cin, cin, 3, stride, cin, act=None), conv_bn(cin, half, 1))
                             if stride > 1 else None)

        def forward(self, x):
            if self.stride > 1:
                out = torch.cat([self.shortcut(x), self.branch(x)], 1)
            else:
                a, b = x.chunk(2, dim=1)
                out = torch.cat([a, self.branch(b)], 1)
            n, c, h, w = out.shape
            return out.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    if name == "squeezenet":
        return nn.Sequential(conv_bn(3, 48, 3), nn.MaxPool2d(2),
                             Fire(48, 16, 32), Fire(64, 16, 32), nn.MaxPool2d(2),
                             Fire(64, 32, 64), Fire(128, 32, 64), nn.MaxPool2d(2),
                             Fire(128, 48, 96), nn.Dropout(0.2), nn.Conv2d(192, 10, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if name == "mobilenetv2":
        return nn.Sequential(conv_bn(3, 32, 3, act=nn.ReLU6),
                             InvertedResidual(32, 16, 1, expand=1), InvertedResidual(16, 24, 2),
                             InvertedResidual(24, 24, 1), InvertedResidual(24, 32, 2), InvertedResidual(32, 32, 1),
                             InvertedResidual(32, 64, 2), InvertedResidual(64, 64, 1), InvertedResidual(64, 96, 1),
                             conv_bn(96, 320, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(320, 10))
    if name == "shufflenetv2":
        return nn.Sequential(conv_bn(3, 24, 3), ShuffleBlock(24, 48, 2), ShuffleBlock(48, 48, 1),
                             ShuffleBlock(48, 96, 2), ShuffleBlock(96, 96, 1), ShuffleBlock(96, 96, 1),
                             ShuffleBlock(96, 192, 2), ShuffleBlock(192, 192, 1), conv_bn(192, 256, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))
    raise ValueError(f"unknown architecture {name!r}")


NAMES = ("squeezenet", "mobilenetv2", "shufflenetv2")


def train(name: str, train_set, test_set, epochs: int, seed: int = 0) -> tuple[object, float]:
    """Train one architecture; (module in eval mode, top-1 on the test set)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(name)
    x, y = train_set
    steps = epochs * (len(x) // 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for epoch in range(epochs):
        model.train()
        began, order = time.time(), rng.permutation(len(x))
        for start in range(0, len(order) - 63, 64):
            idx = order[start:start + 64]
            dy, dx = rng.integers(0, 9, 2)
            batch = padded[idx, :, dy:dy + 32, dx:dx + 32]
            flip = rng.random(len(idx)) < 0.5
            batch[flip] = batch[flip, :, :, ::-1]
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.ascontiguousarray(batch))),
                                                     torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        print(f"{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.time() - began:.0f} s)", flush=True)
    model.eval()
    return model, accuracy(model, *test_set)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        hits = sum(int((model(torch.from_numpy(x[i:i + 500])).argmax(1).numpy() == y[i:i + 500]).sum())
                   for i in range(0, len(x), 500))
    return hits / len(x)


def export(model, path: Path) -> None:
    import onnx
    import torch

    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=13, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(NAMES), help="comma-separated architectures")
    ap.add_argument("--epochs", type=int, default=15, help="training epochs over the 5 000 images")
    args = ap.parse_args(argv)
    if not CIFAR.is_dir():
        sys.exit(f"needs the CIFAR-10 JPEGs at {CIFAR}")
    train_set, test_set = load_split(CIFAR / "train-subset"), load_split(CIFAR / "test")
    OUT.mkdir(exist_ok=True)
    for name in args.only.split(","):
        model, top1 = train(name, train_set, test_set, args.epochs)
        export(model, OUT / f"{name}.onnx")
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e3:.0f} k parameters, top-1 {top1:.2%} on the 10 000 test JPEGs, "
              f"wrote {OUT / f'{name}.onnx'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
