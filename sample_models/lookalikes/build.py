"""Tiny "lookalikes" of third-party ONNX exports users bring, with random weights, and their calibration images.

Each architecture reproduces the module structure (and so the exported op patterns) of a real
model that users run through onnxprune, at a much smaller width so the files can be committed:

``yolov8_like``
    An ultralytics YOLOv8n detector (``yolov8n.yaml``: backbone Conv/C2f/SPPF, FPN/PAN neck,
    anchor-free ``Detect`` head), exported the way ``yolo export format=onnx dynamic=True`` does:
    input ``images`` (N,3,H,W), output ``output0`` (N, 4+nc, anchors).

    * Conv = Conv2d (no bias) - BatchNorm - SiLU; SiLU is exported as ``x * Sigmoid(x)``
      (Sigmoid, Mul), as in every ultralytics ONNX file.
    * C2f: Conv 1x1 -> split in two (``chunk``: Split) -> n Bottlenecks (Conv 3x3, Conv 3x3, +x in
      the backbone, no shortcut in the neck) each appended -> Concat -> Conv 1x1.
    * SPPF: Conv 1x1 -> 3 chained MaxPool 5x5 (stride 1, pad 2) -> Concat of the 4 -> Conv 1x1.
    * neck: nn.Upsample(scale 2, nearest) (Resize) + Concat with the backbone level, C2f, then
      stride-2 Convs + Concat down again (P3/8, P4/16, P5/32).
    * Detect: per level a box tower (Conv 3x3, Conv 3x3, Conv2d 1x1 -> 4*reg_max) and a class tower
      (Conv 3x3, Conv 3x3, Conv2d 1x1 -> nc), concatenated on channels, flattened (Reshape) and
      concatenated over levels; DFL (Reshape (N,4,reg_max,A) -> Transpose -> Softmax -> fixed 1x1
      Conv whose weights are 0..reg_max-1, no grad -> Reshape); anchor points and strides computed
      from the feature maps' runtime Shape (``torch.arange`` over each level's H and W, meshgrid,
      ``torch.full``: Range/Expand/ConstantOfShape in the graph, so they stay dynamic); dist2bbox
      (chunk, Sub, Add, Div, Concat) times the strides, concatenated with Sigmoid class scores.

    The committed variant has widths 8,8,16,16,24 (YOLOv8n: 16,32,64,128,256), the same depths
    (C2f n = 1,2,2,1 in the backbone, 1 in the neck), reg_max 16, nc 4 and towers 8 wide (YOLOv8n:
    64 box / 80 class). ``--full`` writes the real YOLOv8n size (3.16 M parameters, nc 80) to the
    git-ignored ``full/`` folder, for benchmarks only.

``ppocr_det_like``
    A PaddleOCR PP-OCRv4 mobile text detector (DBNet), as paddle2onnx exports it with dynamic
    N,H,W: input ``x`` (N,3,H,W), output ``sigmoid_0.tmp_0`` (N,1,H,W).

    * PP-LCNet-style backbone: stem Conv 3x3/2 - BN - HardSwish, then depthwise-separable blocks
      (depthwise Conv kxk - BN - HardSwish, optional SE, pointwise Conv 1x1 - BN - HardSwish); SE =
      AdaptiveAvgPool(1) -> Conv 1x1 -> ReLU -> Conv 1x1 -> HardSigmoid -> Mul. Levels at 1/4, 1/8,
      1/16, 1/32.
    * DBFPN: 1x1 lateral convs to 24 channels, top-down upsample x2 (nearest Resize) + Add, 3x3
      convs to 6 channels per level, upsample to 1/4 (x8, x4, x2) and Concat.
    * DB head (probability map branch): Conv 3x3 - BN - ReLU -> ConvTranspose 2x2/2 - BN - ReLU ->
      ConvTranspose 2x2/2 -> Sigmoid.

``ppocr_rec_like``
    A PP-OCRv4 mobile text recogniser (SVTR-LCNet + CTC) for 48-pixel text lines: input ``x``
    (N,3,48,W) with W dynamic, output ``softmax_5.tmp_0`` (N, W/8, 97).

    * backbone: Conv 3x3/2 - BN - HardSwish, depthwise-separable blocks with strides (2,2), (2,1),
      1 (with SE), (2,1) (SE), then AvgPool (3,2): height 48 -> 1, width W -> W/8.
    * SVTR mixing blocks (x2) on the sequence: (N,C,1,W') -> flatten/transpose (Reshape,
      Transpose) -> LayerNorm -> multi-head self-attention written as in PaddleOCR's SVTR
      (fused qkv Linear -> Reshape (N,L,3,heads,hd) -> Transpose -> Gather q,k,v -> q*scale ->
      MatMul(q, k^T) -> Softmax -> MatMul(., v) -> Transpose -> Reshape -> Linear) -> residual Add
      -> LayerNorm -> MLP (Linear C->2C -> GELU -> Linear 2C->C) -> residual Add; final LayerNorm.
    * CTC head: Linear (MatMul + Add) to 97 classes -> Softmax over the classes.

    ``--full --only ppocr_rec_like`` writes PP-OCRv4 mobile's sizes (a 480-channel backbone of eight
    depthwise-separable blocks, a 1x1 reduction to 120, SVTR at 120 channels with 8 heads, 6 625 characters)
    as ``full/ppocrv4_rec_like.*.onnx`` (git-ignored), for benchmarks only.

``ppocr_cls_like``
    The PP-OCR mobile text-orientation classifier (MobileNetV3-small x0.35, 0/180 degrees):
    input ``x`` (N,3,48,192) with N,H,W dynamic, output ``softmax_0.tmp_0`` (N,2).

    * MobileNetV3-small residual units: expand Conv 1x1 - BN - act, depthwise Conv kxk - BN - act,
      optional SE (AdaptiveAvgPool -> Conv -> ReLU -> Conv -> HardSigmoid -> Mul), project Conv 1x1
      - BN, residual Add when the shape is kept; ReLU in the first units, HardSwish after.
    * head: Conv 1x1 - BN - HardSwish, AdaptiveAvgPool(1), Flatten, Linear -> 2, Softmax.

Every model is exported twice, like ``sample_models/zoo``: ``<name>.ts.onnx`` by the TorchScript
exporter (``dynamo=False``, opset 17, ``dynamic_axes``) and ``<name>.dynamo.onnx`` by the dynamo
exporter (``dynamo=True``, opset 18, ``dynamic_shapes`` with ``torch.export.Dim``; H and W are
multiples of 32 for the detectors and W a multiple of 8 for the recogniser so that the export does not
specialise them). Batch, height and width are dynamic in both (height is fixed to 48 for the
recogniser, as in PaddleOCR). BatchNorm layers get random affine parameters and running statistics
measured on the calibration images; every export is checked with ONNX Runtime against torch at the
calibration resolution and at two others.

Calibration data: ``<name>_calib/`` holds 16 seeded synthetic JPEG images (gradients, shapes,
text-like stripes or text lines) at the calibration resolution (yolo 320x320, det 320x480 (HxW),
rec 48x320, cls 48x192); ``<name>.npz`` holds the same images preprocessed (input ``x``, float16)
for the two small-input models. Preprocessing: yolo pixels / 255; det ImageNet mean/std;
rec/cls (pixels / 255 - 0.5) / 0.5. (``LOOKALIKES[name].mean/std`` give the values.)

    pip install -e ".[torch]"
    python sample_models/lookalikes/build.py [--only NAME ...] [--full]
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
FULL_DIR = HERE / "full"
IMAGES = 16


# =========================================================================== synthetic calibration images
def _gradient(rng: np.random.Generator, h: int, w: int, lo: float = 0.0, hi: float = 255.0) -> np.ndarray:
    """A linear two-colour gradient in a random direction, (h, w, 3) float."""
    a, b = rng.uniform(lo, hi, 3), rng.uniform(lo, hi, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    return a + (b - a) * t[..., None]


def _finish(rng: np.random.Generator, img: Image.Image, blur: float, noise: float) -> Image.Image:
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    x = np.asarray(img, np.float32) + rng.normal(0, noise, (img.height, img.width, 3))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _words(rng: np.random.Generator, draw: ImageDraw.ImageDraw, x0: int, y0: int, x1: int, line_h: int,
           ink: tuple[int, int, int]) -> None:
    """A row of dark "glyphs" (thin bars, small boxes, ovals) grouped into words, from x0 to x1."""
    x = x0
    while x < x1 - line_h:
        for _ in range(int(rng.integers(2, 8))):
            gw = int(rng.integers(max(2, line_h // 4), max(3, line_h * 2 // 3)))
            top = y0 + int(rng.integers(0, max(1, line_h // 4)))
            bottom = y0 + line_h - int(rng.integers(0, max(1, line_h // 4)))
            kind = rng.integers(0, 3)
            stroke = max(1, line_h // 8)
            if kind == 0:
                draw.rectangle([x, top, x + stroke, bottom], fill=ink)
                draw.rectangle([x, bottom - stroke, x + gw, bottom], fill=ink)
            elif kind == 1:
                draw.ellipse([x, top + line_h // 4, x + gw, bottom], outline=ink, width=stroke)
            else:
                draw.line([x, bottom, x + gw // 2, top, x + gw, bottom], fill=ink, width=stroke)
            x += gw + int(rng.integers(1, max(2, line_h // 5)))
            if x >= x1 - line_h:
                break
        x += int(rng.integers(line_h // 2, line_h + 1))


def scene_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A "photo": gradient background, filled rectangles/ellipses/polygons, a sign with text stripes."""
    img = Image.fromarray(_gradient(rng, h, w).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(0.04, 0.3) * w, rng.uniform(0.04, 0.3) * h
        kind = rng.integers(0, 3)
        box = [cx - sx, cy - sy, cx + sx, cy + sy]
        if kind == 0:
            draw.rectangle(box, fill=_colour(rng))
        elif kind == 1:
            draw.ellipse(box, fill=_colour(rng))
        else:
            pts = [(cx + sx * math.cos(a), cy + sy * math.sin(a))
                   for a in np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))]
            draw.polygon(pts, fill=_colour(rng))
    bx, by = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 8, h // 4))
    draw.rectangle([bx, by, bx + bw, by + bh], fill=_colour(rng, 180, 256))
    line_h = max(6, bh // 3)
    for y in range(by + 2, by + bh - line_h, line_h + 2):
        _words(rng, draw, bx + 3, y, bx + bw - 3, line_h, _colour(rng, 0, 80))
    return _finish(rng, img, blur=rng.uniform(0.0, 1.0), noise=4.0)


def document_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A photographed page or sign: light background, paragraphs of text lines, a coloured box or two."""
    img = Image.fromarray(_gradient(rng, h, w, 150, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.rectangle([x, y, x + int(rng.integers(20, w // 3)), y + int(rng.integers(20, h // 3))],
                       fill=_colour(rng, 60, 256))
    y = int(rng.integers(4, 20))
    while y < h - 12:
        line_h = int(rng.integers(8, 24))
        x0 = int(rng.integers(4, w // 4))
        x1 = int(rng.integers(w // 2, w - 4))
        if rng.uniform() < 0.8:
            _words(rng, draw, x0, y, x1, line_h, _colour(rng, 0, 90))
        y += line_h + int(rng.integers(3, 14))
    return _finish(rng, img, blur=rng.uniform(0.0, 0.8), noise=3.0)


def text_line_image(rng: np.random.Generator, h: int, w: int, flip: bool = False) -> Image.Image:
    """A cropped text line: light or dark background, one row of glyphs filling most of the width."""
    dark = rng.uniform() < 0.25
    img = Image.fromarray(_gradient(rng, h, w, 0 if dark else 150, 110 if dark else 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    line_h = int(h * rng.uniform(0.45, 0.7))
    top = int(rng.integers(2, max(3, h - line_h - 2)))
    ink = _colour(rng, 170, 256) if dark else _colour(rng, 0, 90)
    _words(rng, draw, int(rng.integers(2, 12)), top, int(w * rng.uniform(0.6, 1.0)), line_h, ink)
    # an underline-like baseline mark makes the orientation visible
    draw.line([4, top + line_h + 1, w - 4, top + line_h + 1], fill=ink, width=1)
    if flip:
        img = img.rotate(180)
    return _finish(rng, img, blur=rng.uniform(0.0, 0.7), noise=3.0)


# =========================================================================== lookalike registry
@dataclass
class Lookalike:
    """One model: a factory, I/O names, calibration size, preprocessing and the export's dynamic axes."""

    make: Callable[..., object]
    input: str
    outputs: tuple[str, ...]
    calib: tuple[int, int]                      # (H, W) of the calibration images
    others: tuple[tuple[int, int], ...]         # two more (H, W) the exports are checked at
    images: Callable[[np.random.Generator, int, int, int], Image.Image]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    multiple: tuple[int, int] = (32, 32)        # H, W multiples the dynamo export keeps symbolic
    static_h: bool = False                      # height fixed (text recogniser)
    out_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # TorchScript dynamic axes of outputs
    npz: bool = False                           # also ship <name>.npz (only when it stays small)


def _yolo_images(rng, h, w, i):
    return scene_image(rng, h, w)


def _det_images(rng, h, w, i):
    return document_image(rng, h, w) if i % 4 else scene_image(rng, h, w)


def _rec_images(rng, h, w, i):
    return text_line_image(rng, h, w)


def _cls_images(rng, h, w, i):
    return text_line_image(rng, h, w, flip=bool(i % 2))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

LOOKALIKES: dict[str, Lookalike] = {
    "yolov8_like": Lookalike(lambda full=False: make_yolov8(full), "images", ("output0",), (320, 320),
                             ((256, 384), (416, 320)), _yolo_images,
                             out_axes={"output0": {0: "N", 2: "anchors"}}),
    "ppocr_det_like": Lookalike(lambda: make_ppocr_det(), "x", ("sigmoid_0.tmp_0",), (320, 480),
                                ((256, 320), (416, 352)), _det_images, IMAGENET_MEAN, IMAGENET_STD,
                                out_axes={"sigmoid_0.tmp_0": {0: "N", 2: "H", 3: "W"}}),
    "ppocr_rec_like": Lookalike(lambda full=False: make_ppocr_rec(full), "x", ("softmax_5.tmp_0",), (48, 320),
                                ((48, 160), (48, 488)), _rec_images, (0.5,) * 3, (0.5,) * 3, multiple=(48, 8),
                                static_h=True, out_axes={"softmax_5.tmp_0": {0: "N", 1: "T"}}, npz=True),
    "ppocr_cls_like": Lookalike(lambda: make_ppocr_cls(), "x", ("softmax_0.tmp_0",), (48, 192),
                                ((32, 100), (64, 256)), _cls_images, (0.5,) * 3, (0.5,) * 3, multiple=(1, 1),
                                out_axes={"softmax_0.tmp_0": {0: "N"}}, npz=True),
}


FULL_STEMS = {"yolov8_like": "yolov8n_like", "ppocr_rec_like": "ppocrv4_rec_like"}  # --full: file stems in full/


def calibration_images(name: str, seed: int) -> list[Image.Image]:
    spec = LOOKALIKES[name]
    rng = np.random.default_rng(seed)
    h, w = spec.calib
    return [spec.images(rng, h, w, i) for i in range(IMAGES)]


def preprocess(name: str, images: list[Image.Image], size: tuple[int, int] | None = None) -> np.ndarray:
    """Images -> float32 NCHW as onnxprune's image reader makes them (bilinear resize, /255, mean/std)."""
    spec = LOOKALIKES[name]
    out = []
    for img in images:
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        x = np.asarray(img.convert("RGB"), np.float32) / 255.0
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


# =========================================================================== torch modules (imported lazily)
def _torch():
    import torch
    return torch


def make_yolov8(full: bool = False):
    torch = _torch()
    from torch import nn

    class Conv(nn.Module):
        """ultralytics.nn.modules.conv.Conv: Conv2d(bias=False) - BatchNorm2d - SiLU."""

        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c1, c2, shortcut=True, e=1.0):
            super().__init__()
            c_ = int(c2 * e)
            self.cv1, self.cv2 = Conv(c1, c_, 3), Conv(c_, c2, 3)
            self.add = shortcut and c1 == c2

        def forward(self, x):
            return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=False, e=0.5):
            super().__init__()
            self.c = int(c2 * e)
            self.cv1 = Conv(c1, 2 * self.c, 1)
            self.cv2 = Conv((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c_ = c1 // 2
            self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(c_ * 4, c2, 1)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class DFL(nn.Module):
        def __init__(self, c1=16):
            super().__init__()
            self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = nn.Parameter(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
            self.c1 = c1

        def forward(self, x):
            b, _, a = x.shape
            return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    def make_anchors(feats, strides, offset=0.5):
        anchor_points, stride_tensor = [], []
        dtype = feats[0].dtype
        for i, stride in enumerate(strides):
            _, _, h, w = feats[i].shape
            sx = torch.arange(end=w, dtype=dtype) + offset
            sy = torch.arange(end=h, dtype=dtype) + offset
            sy, sx = torch.meshgrid(sy, sx, indexing="ij")
            anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
            stride_tensor.append(torch.full((h * w, 1), stride, dtype=dtype))
        return torch.cat(anchor_points), torch.cat(stride_tensor)

    def dist2bbox(distance, anchor_points, dim=1):
        lt, rb = distance.chunk(2, dim)
        x1y1 = anchor_points - lt
        x2y2 = anchor_points + rb
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)

    class Detect(nn.Module):
        def __init__(self, nc, ch, reg_max=16, c2=None, c3=None):
            super().__init__()
            self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
            self.no = nc + 4 * reg_max
            self.stride = (8.0, 16.0, 32.0)
            c2 = c2 or max(16, ch[0] // 4, reg_max * 4)
            c3 = c3 or max(ch[0], min(nc, 100))
            self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                     for x in ch)
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
            self.dfl = DFL(reg_max)

        def forward(self, x):
            x = [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(self.nl)]
            shape = x[0].shape
            x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
            anchors, strides = (t.transpose(0, 1) for t in make_anchors(x, self.stride, 0.5))
            box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
            dbox = dist2bbox(self.dfl(box), anchors.unsqueeze(0), dim=1) * strides
            return torch.cat((dbox, cls.sigmoid()), 1)

    class YOLOv8(nn.Module):
        """yolov8.yaml at width w = (P1, P2, P3, P4, P5) channels and C2f depths n = (P2, P3, P4, P5, neck)."""

        def __init__(self, w, n, nc, c2=None, c3=None):
            super().__init__()
            self.b0 = Conv(3, w[0], 3, 2)
            self.b1 = Conv(w[0], w[1], 3, 2)
            self.b2 = C2f(w[1], w[1], n[0], True)
            self.b3 = Conv(w[1], w[2], 3, 2)
            self.b4 = C2f(w[2], w[2], n[1], True)
            self.b5 = Conv(w[2], w[3], 3, 2)
            self.b6 = C2f(w[3], w[3], n[2], True)
            self.b7 = Conv(w[3], w[4], 3, 2)
            self.b8 = C2f(w[4], w[4], n[3], True)
            self.b9 = SPPF(w[4], w[4], 5)
            self.up = nn.Upsample(None, 2, "nearest")
            self.h12 = C2f(w[4] + w[3], w[3], n[4])
            self.h15 = C2f(w[3] + w[2], w[2], n[4])
            self.h16 = Conv(w[2], w[2], 3, 2)
            self.h18 = C2f(w[2] + w[3], w[3], n[4])
            self.h19 = Conv(w[3], w[3], 3, 2)
            self.h21 = C2f(w[3] + w[4], w[4], n[4])
            self.detect = Detect(nc, (w[2], w[3], w[4]), 16, c2, c3)

        def forward(self, x):
            p4 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
            p6 = self.b6(self.b5(p4))
            p9 = self.b9(self.b8(self.b7(p6)))
            h12 = self.h12(torch.cat([self.up(p9), p6], 1))
            h15 = self.h15(torch.cat([self.up(h12), p4], 1))
            h18 = self.h18(torch.cat([self.h16(h15), h12], 1))
            h21 = self.h21(torch.cat([self.h19(h18), p9], 1))
            return self.detect([h15, h18, h21])

    if full:  # yolov8n: width 0.25, depth 0.33 of (64, 128, 256, 512, 1024) / (3, 6, 6, 3, 3)
        return YOLOv8((16, 32, 64, 128, 256), (1, 2, 2, 1, 1), 80)
    return YOLOv8((8, 8, 16, 16, 24), (1, 2, 2, 1, 1), 4, c2=8, c3=8)


def _ppocr_blocks():
    """PaddleOCR-style building blocks shared by the three PP-OCR lookalikes."""
    torch = _torch()
    from torch import nn

    class ConvBNLayer(nn.Sequential):
        def __init__(self, cin, cout, k, s=1, groups=1, act=nn.Hardswish):
            pad = (k - 1) // 2
            layers = [nn.Conv2d(cin, cout, k, s, pad, groups=groups, bias=False), nn.BatchNorm2d(cout)]
            super().__init__(*layers, *([act()] if act is not None else []))

    class SEModule(nn.Module):
        def __init__(self, c, reduction=4):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.conv1 = nn.Conv2d(c, c // reduction, 1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(c // reduction, c, 1)
            self.hardsigmoid = nn.Hardsigmoid()

        def forward(self, x):
            return x * self.hardsigmoid(self.conv2(self.relu(self.conv1(self.avg_pool(x)))))

    class DepthwiseSeparable(nn.Module):
        """PP-LCNet block: depthwise kxk - BN - HardSwish, optional SE, pointwise 1x1 - BN - HardSwish."""

        def __init__(self, cin, cout, k, s, use_se=False):
            super().__init__()
            self.dw_conv = ConvBNLayer(cin, cin, k, s, groups=cin)
            self.se = SEModule(cin) if use_se else nn.Identity()
            self.pw_conv = ConvBNLayer(cin, cout, 1)

        def forward(self, x):
            return self.pw_conv(self.se(self.dw_conv(x)))

    return torch, nn, ConvBNLayer, SEModule, DepthwiseSeparable


def make_ppocr_det():
    torch, nn, ConvBNLayer, SEModule, DWS = _ppocr_blocks()
    import torch.nn.functional as F

    class LCNetDet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = ConvBNLayer(3, 8, 3, 2)                                   # 1/2
            self.blocks2 = nn.Sequential(DWS(8, 16, 3, 1))
            self.blocks3 = nn.Sequential(DWS(16, 24, 3, 2), DWS(24, 24, 3, 1))      # 1/4
            self.blocks4 = nn.Sequential(DWS(24, 32, 3, 2), DWS(32, 32, 3, 1))      # 1/8
            self.blocks5 = nn.Sequential(DWS(32, 48, 3, 2), DWS(48, 48, 5, 1, True))  # 1/16
            self.blocks6 = nn.Sequential(DWS(48, 64, 5, 2, True), DWS(64, 64, 5, 1, True))  # 1/32

        def forward(self, x):
            x = self.blocks2(self.conv1(x))
            c2 = self.blocks3(x)
            c3 = self.blocks4(c2)
            c4 = self.blocks5(c3)
            c5 = self.blocks6(c4)
            return c2, c3, c4, c5

    class DBFPN(nn.Module):
        def __init__(self, in_channels=(24, 32, 48, 64), out_channels=24):
            super().__init__()
            self.in2_conv, self.in3_conv, self.in4_conv, self.in5_conv = (
                nn.Conv2d(c, out_channels, 1, bias=False) for c in in_channels)
            self.p5_conv, self.p4_conv, self.p3_conv, self.p2_conv = (
                nn.Conv2d(out_channels, out_channels // 4, 3, padding=1, bias=False) for _ in range(4))

        def forward(self, x):
            c2, c3, c4, c5 = x
            in5, in4, in3, in2 = self.in5_conv(c5), self.in4_conv(c4), self.in3_conv(c3), self.in2_conv(c2)
            out4 = in4 + F.interpolate(in5, scale_factor=2, mode="nearest")
            out3 = in3 + F.interpolate(out4, scale_factor=2, mode="nearest")
            out2 = in2 + F.interpolate(out3, scale_factor=2, mode="nearest")
            p5, p4, p3, p2 = self.p5_conv(in5), self.p4_conv(out4), self.p3_conv(out3), self.p2_conv(out2)
            p5 = F.interpolate(p5, scale_factor=8, mode="nearest")
            p4 = F.interpolate(p4, scale_factor=4, mode="nearest")
            p3 = F.interpolate(p3, scale_factor=2, mode="nearest")
            return torch.cat([p5, p4, p3, p2], dim=1)

    class DBHead(nn.Module):
        """The probability-map branch ("binarize") of PaddleOCR's DBHead, as exported for inference."""

        def __init__(self, c=24):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c // 4, 3, padding=1, bias=False)
            self.conv_bn1 = nn.BatchNorm2d(c // 4)
            self.conv2 = nn.ConvTranspose2d(c // 4, c // 4, 2, 2)
            self.conv_bn2 = nn.BatchNorm2d(c // 4)
            self.conv3 = nn.ConvTranspose2d(c // 4, 1, 2, 2)

        def forward(self, x):
            x = torch.relu(self.conv_bn1(self.conv1(x)))
            x = torch.relu(self.conv_bn2(self.conv2(x)))
            return torch.sigmoid(self.conv3(x))

    class DBNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.head = LCNetDet(), DBFPN(), DBHead()

        def forward(self, x):
            return self.head(self.neck(self.backbone(x)))

    return DBNet()


def make_ppocr_rec(full: bool = False):
    torch, nn, ConvBNLayer, SEModule, DWS = _ppocr_blocks()

    class Attention(nn.Module):
        """PaddleOCR SVTR global mixing: fused qkv, heads split by reshape/transpose, softmax attention."""

        def __init__(self, dim, num_heads):
            super().__init__()
            self.num_heads, self.head_dim = num_heads, dim // num_heads
            self.scale = self.head_dim ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
            attn = torch.softmax(q.matmul(k.transpose(-2, -1)), dim=-1)
            x = attn.matmul(v).transpose(1, 2).reshape(b, n, c)
            return self.proj(x)

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, num_heads, mlp_ratio=2.0):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.mixer = Attention(dim, num_heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

        def forward(self, x):
            x = x + self.mixer(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class Rec(nn.Module):
        def __init__(self, dim=40, heads=4, depth=2, classes=97):
            super().__init__()
            self.backbone = nn.Sequential(
                ConvBNLayer(3, 16, 3, 2),                   # 24 x W/2
                DWS(16, 32, 3, (2, 2)),                     # 12 x W/4
                DWS(32, 48, 3, (2, 1)),                     # 6 x W/4
                DWS(48, 48, 5, 1, True),
                DWS(48, dim, 5, (2, 1), True),              # 3 x W/4
                nn.AvgPool2d((3, 2), (3, 2)),               # 1 x W/8
            )
            if full:  # PP-OCRv4 mobile's sizes: a 480-channel backbone, SVTR at 120 channels, 6 625 characters
                self.backbone = nn.Sequential(
                    ConvBNLayer(3, 32, 3, 2),               # 24 x W/2
                    DWS(32, 64, 3, 1),
                    DWS(64, 128, 3, (2, 2)),                # 12 x W/4
                    DWS(128, 128, 3, 1),
                    DWS(128, 256, 3, (2, 1)),               # 6 x W/4
                    DWS(256, 256, 5, 1, True),
                    DWS(256, 256, 5, 1, True),
                    DWS(256, 480, 5, (2, 1), True),         # 3 x W/4
                    nn.AvgPool2d((3, 2), (3, 2)),           # 1 x W/8
                    ConvBNLayer(480, dim, 1),               # the SVTR neck's channel reduction
                )
            self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.fc = nn.Linear(dim, classes)              # CTCHead

        def forward(self, x):
            x = self.backbone(x)                            # N, C, 1, W'
            x = x.flatten(2).transpose(1, 2)                # N, W', C
            for blk in self.blocks:
                x = blk(x)
            return torch.softmax(self.fc(self.norm(x)), dim=2)

    return Rec(dim=120, heads=8, classes=6625) if full else Rec()


def make_ppocr_cls():
    torch, nn, ConvBNLayer, SEModule, DWS = _ppocr_blocks()

    def make_divisible(v, divisor=8, min_value=None):
        min_value = min_value or divisor
        new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
        return new_v + divisor if new_v < 0.9 * v else new_v

    class ResidualUnit(nn.Module):
        def __init__(self, cin, mid, cout, k, s, use_se, act):
            super().__init__()
            self.if_shortcut = s == 1 and cin == cout
            self.expand_conv = ConvBNLayer(cin, mid, 1, act=act)
            self.bottleneck_conv = ConvBNLayer(mid, mid, k, s, groups=mid, act=act)
            self.mid_se = SEModule(mid) if use_se else nn.Identity()
            self.linear_conv = ConvBNLayer(mid, cout, 1, act=None)

        def forward(self, x):
            y = self.linear_conv(self.mid_se(self.bottleneck_conv(self.expand_conv(x))))
            return x + y if self.if_shortcut else y

    class MobileNetV3Cls(nn.Module):
        # MobileNetV3-small (k, exp, c, se, act, s) at scale 0.35, last stage shortened (tiny lookalike).
        cfg = [(3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
               (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1),
               (5, 120, 48, True, nn.Hardswish, 1), (5, 144, 48, True, nn.Hardswish, 1),
               (5, 192, 96, True, nn.Hardswish, 2)]

        def __init__(self, scale=0.35, squeeze=160, classes=2):
            super().__init__()
            cin = make_divisible(16 * scale)
            self.conv1 = ConvBNLayer(3, cin, 3, 2)
            blocks = []
            for k, exp, c, se, act, s in self.cfg:
                mid, cout = make_divisible(scale * exp), make_divisible(scale * c)
                blocks.append(ResidualUnit(cin, mid, cout, k, s, se, act))
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.conv2 = ConvBNLayer(cin, make_divisible(scale * squeeze), 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(make_divisible(scale * squeeze), classes)

        def forward(self, x):
            x = self.pool(self.conv2(self.blocks(self.conv1(x))))
            return torch.softmax(self.fc(torch.flatten(x, 1)), dim=1)

    return MobileNetV3Cls()


# =========================================================================== weights, export, checks
def randomise(model, data: np.ndarray, seed: int):
    """Random affine BN/LN parameters, BN running statistics measured on ``data``, then eval mode."""
    torch = _torch()
    from torch import nn
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the batches below
        model.train()
        x = torch.from_numpy(data)
        for i in range(0, len(x), 4):
            model(x[i:i + 4])
    return model.eval()


def export(model, name: str, spec: Lookalike, folder: Path, dynamo: bool) -> Path:
    torch = _torch()
    path = folder / f"{name}.{'dynamo' if dynamo else 'ts'}.onnx"
    h, w = spec.calib
    example = torch.randn(2, 3, h, w)
    outs = list(spec.outputs)
    if dynamo:
        Dim = torch.export.Dim
        axes = {0: Dim("N", min=1, max=256)}
        mh, mw = spec.multiple
        if not spec.static_h:
            axes[2] = mh * Dim("h", min=1, max=4096 // mh) if mh > 1 else Dim("H", min=16, max=4096)
        axes[3] = mw * Dim("w", min=2, max=4096 // mw) if mw > 1 else Dim("W", min=16, max=4096)
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=18, input_names=[spec.input],
                          output_names=outs, dynamic_shapes=({k: v for k, v in axes.items()},),
                          external_data=False, verbose=False)
    else:
        in_axes = {0: "N", 3: "W"} if spec.static_h else {0: "N", 2: "H", 3: "W"}
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=[spec.input],
                          output_names=outs, dynamic_axes={spec.input: in_axes, **spec.out_axes})
    strip_metadata(path, None if dynamo else static_output_dims(model, example, spec))
    return path


def static_output_dims(model, example, spec: Lookalike) -> dict[str, dict[int, int]]:
    """The output dims not declared dynamic, with their values: the TorchScript exporter loses some to symbols
    (YOLO's 4+nc channels become 'Concatoutput0_dim_1'), which the real exports have as numbers."""
    outs = model(example)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {name: {i: int(d) for i, d in enumerate(o.shape) if i not in spec.out_axes.get(name, {})}
            for name, o in zip(spec.outputs, outs)}


def strip_metadata(path: Path, static_dims: dict[str, dict[int, int]] | None = None) -> None:
    """Drop per-node stack traces and doc strings (local paths): smaller, reproducible files; give the
    graph outputs the static dims in ``static_dims`` (output name -> {axis: size})."""
    proto = onnx.load(str(path))
    for out in proto.graph.output:
        for axis, size in (static_dims or {}).get(out.name, {}).items():
            dim = out.type.tensor_type.shape.dim[axis]
            if dim.dim_param:
                dim.dim_value = size
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    onnx.save(proto, str(path))


def check_export(model, name: str, path: Path, images: list[Image.Image]) -> list[str]:
    """ONNX Runtime vs torch at the calibration size and the two others (rtol 1e-4); one line per size."""
    import onnxruntime as ort
    torch = _torch()
    spec = LOOKALIKES[name]
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lines = []
    for size in (spec.calib, *spec.others):
        x = preprocess(name, images[:2], size)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {spec.input: x})[0]
        assert got.shape == want.shape, (path.name, size, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()),
                                   err_msg=f"{path.name} at {size}")
        lines.append(f"{size[0]}x{size[1]} -> {tuple(got.shape)} ok")
    return lines


def build(name: str, full: bool = False) -> list[Path]:
    torch = _torch()
    spec = LOOKALIKES[name]
    seed = sorted(LOOKALIKES).index(name)
    images = calibration_images(name, seed)
    written: list[Path] = []
    if full:
        folder = FULL_DIR
        folder.mkdir(exist_ok=True)
    else:
        folder = HERE
        img_dir = HERE / f"{name}_calib"
        img_dir.mkdir(exist_ok=True)
        for old in img_dir.glob("*.jpg"):
            old.unlink()
        for i, img in enumerate(images):
            p = img_dir / f"{i:03d}.jpg"
            img.save(p, quality=85)
            written.append(p)
    # What the model sees is the decoded JPEG, as onnxprune reads it.
    decoded = [Image.open(p).convert("RGB") for p in written] if written else images
    data = preprocess(name, decoded)
    if spec.npz and not full:
        npz = HERE / f"{name}.npz"
        np.savez_compressed(npz, **{spec.input: data.astype(np.float16)})
        written.append(npz)
    torch.manual_seed(seed)
    model = spec.make(full=True) if full else spec.make()
    model = randomise(model, data, seed)
    stem = FULL_STEMS[name] if full else name
    with torch.no_grad():
        for dynamo in (False, True):
            path = export(model, stem, spec, folder, dynamo)
            for line in check_export(model, name, path, decoded):
                print(f"  {path.name}: {line}")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(LOOKALIKES), help="build only these")
    ap.add_argument("--full", action="store_true",
                    help="write the full-size lookalikes (YOLOv8n, and with --only ppocr_rec_like PP-OCRv4's "
                         "recogniser) to the git-ignored full/ folder instead")
    args = ap.parse_args(argv)
    _torch().set_num_threads(2)
    names = args.only or (["yolov8_like"] if args.full else list(LOOKALIKES))
    if args.full and not set(names) <= set(FULL_STEMS):
        ap.error(f"--full builds only {', '.join(sorted(FULL_STEMS))}")
    for name in names:
        for path in build(name, args.full):
            if path.suffix != ".jpg":
                print(f"{path.relative_to(HERE.parent)}  {path.stat().st_size / 1024:8.1f} KiB")
        if not args.full:
            folder = HERE / f"{name}_calib"
            size = sum(p.stat().st_size for p in folder.iterdir())
            print(f"{folder.relative_to(HERE.parent)}/  {IMAGES} images  {size / 1024:8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
