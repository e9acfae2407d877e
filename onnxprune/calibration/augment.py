"""Seeded augmentation of the calibration images: more statistics from few images (``--augment N``).

Each calibration sample gets N transformed copies; held-out samples are never copied, so fidelity is still judged
on inputs the statistics never saw. A copy is made from the preprocessed tensor (after resizing and
normalisation), so it works for image folders and for .npz/.npy data alike, on every image input of the model
(4-D, NCHW or NHWC); other inputs are fed as the source sample has them. Copy j of source s is drawn from a
generator seeded by (seed, its index), so batching, shards, the cache and Ray workers see the same bytes.

Operations (``--augment-ops``):
- ``flip``: a horizontal flip, with probability 1/2;
- ``mirror``: a horizontal flip, always (``--augment 1 --augment-ops mirror``: each sample and its mirror image);
- ``crop``: a window of 56–100 % of the area, aspect ratio jittered within 4:5–5:4, resized back (bilinear);
- ``scale``: the whole image shrunk to 70–100 % of its sides and placed at random on a canvas of its border's
  per-channel mean (for letterboxed inputs the pad colour).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.calibration.images import infer_layout
from onnxprune.calibration.sources import CalibrationData
from onnxprune.errors import UsageError

OPS = ("flip", "mirror", "crop", "scale")
DEFAULT_OPS = ("flip", "crop")
_AREA = (0.56, 1.0)
_ASPECT = (0.8, 1.25)
_SHRINK = (0.7, 1.0)


@dataclass(frozen=True)
class Augmentation:
    """``copies`` transformed copies of every calibration sample, by ``ops`` (module docstring)."""

    copies: int = 0
    ops: tuple[str, ...] = DEFAULT_OPS

    def describe(self, samples: int) -> str:
        """The summary's note for a run that calibrated on ``samples`` samples and their copies."""
        return (f"calibrated on {samples} samples and {self.copies} augmented cop{'y' if self.copies == 1 else 'ies'} "
                f"of each ({', '.join(self.ops)}; seeded by --seed)")

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise UsageError(f"--augment must be 0 or more copies, got {self.copies}")
        unknown = [op for op in self.ops if op not in OPS]
        if unknown or not self.ops:
            raise UsageError(f"--augment-ops takes some of {', '.join(OPS)}, got {','.join(self.ops) or 'none'}")


def parse_ops(text: str) -> tuple[str, ...]:
    """``"flip,crop"`` → ("flip", "crop") (checked by :class:`Augmentation`)."""
    return tuple(dict.fromkeys(op.strip().lower() for op in text.split(",") if op.strip()))


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) → (C, height, width), bilinear with half-pixel centres (as PIL, OpenCV and torch resize)."""
    for axis, size in ((1, height), (2, width)):
        n = x.shape[axis]
        if n == size:
            continue
        src = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0, n - 1)
        lo = np.floor(src).astype(np.intp)
        hi = np.minimum(lo + 1, n - 1)
        shape = [1, 1, 1]
        shape[axis] = size
        frac = (src - lo).reshape(shape).astype(x.dtype)
        x = np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac
    return x


def transform(image: np.ndarray, ops: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of ``image`` (C, H, W), same shape and dtype."""
    _, h, w = image.shape
    x = image.astype(np.float32, copy=False)
    if "crop" in ops:
        area = rng.uniform(*_AREA)
        aspect = np.exp(rng.uniform(np.log(_ASPECT[0]), np.log(_ASPECT[1])))
        ch = int(np.clip(round(h * np.sqrt(area * aspect)), 1, h))
        cw = int(np.clip(round(w * np.sqrt(area / aspect)), 1, w))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        x = resize_bilinear(x[:, top:top + ch, left:left + cw], h, w)
    if "scale" in ops:
        factor = rng.uniform(*_SHRINK)
        sh, sw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
        border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1).mean(axis=1)
        canvas = np.empty_like(x)
        canvas[...] = border[:, None, None]
        top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        canvas[:, top:top + sh, left:left + sw] = resize_bilinear(x, sh, sw)
        x = canvas
    if "mirror" in ops or ("flip" in ops and rng.random() < 0.5):
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x, dtype=image.dtype)


class AugmentedData(CalibrationData):
    """``base`` followed by ``copies`` transformed copies of its samples ``sources``: index n + k·|sources| + i is
    copy k of sample ``sources[i]`` (n = len(base))."""

    def __init__(self, base: CalibrationData, sources: np.ndarray, augmentation: Augmentation, seed: int,
                 layouts: dict[str, str]):
        self.base, self.sources = base, np.asarray(sources, dtype=np.int64)
        self.augmentation, self.seed, self.layouts = augmentation, int(seed), dict(layouts)
        self.kind = base.kind
        copies = np.tile(self.sources, augmentation.copies)
        labels = None if base.labels is None else np.concatenate([base.labels, base.labels[copies]])
        super().__init__(base.path, base.inputs, len(base) + copies.size, labels)

    def __repr__(self) -> str:
        return f"{self.base!r} + {self.augmentation.copies} augmented copies of {self.sources.size} samples"

    def _load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        n = len(self.base)
        feed = self.base.load(np.where(idx < n, idx, self.sources[(idx - n) % self.sources.size]))
        for j in np.flatnonzero(idx >= n):
            rng = np.random.default_rng((self.seed, int(idx[j])))
            for name, layout in self.layouts.items():
                last = -1 if layout == "nhwc" else 0   # where the channels are in one sample
                copy = transform(np.moveaxis(feed[name][j], last, 0), self.augmentation.ops, rng)
                feed[name][j] = np.moveaxis(copy, 0, last)
        return feed


def image_layouts(data: CalibrationData, layout: str | None = None) -> dict[str, str]:
    """Per image input (4-D float), its layout: ``layout`` when given (--layout), else inferred from its shape."""
    out = {}
    for spec in data.inputs:
        if len(spec.shape) == 4 and spec.dtype.kind == "f":
            found = layout or infer_layout(spec)
            if found is None:
                raise UsageError(f"--augment cannot tell the layout of input {spec.name!r}",
                                 note="pass --layout nchw or --layout nhwc")
            out[spec.name] = found
    return out


def augmented(data: CalibrationData, calib_idx: np.ndarray, augmentation: Augmentation, seed: int = 0,
              layout: str | None = None) -> tuple[CalibrationData, np.ndarray]:
    """``data`` with ``augmentation.copies`` copies of each calibration sample, and the calibration indices that
    include them (the held-out indices are unchanged). No copies: ``data`` and ``calib_idx`` as they are."""
    if augmentation.copies == 0:
        return data, calib_idx
    layouts = image_layouts(data, layout)
    if not layouts:
        raise UsageError("--augment transforms images, but the model has no 4-D float input",
                         note="drop --augment, or calibrate on more samples")
    out = AugmentedData(data, calib_idx, augmentation, seed, layouts)
    extra = np.arange(len(data), len(out), dtype=np.int64)
    return out, np.concatenate([np.asarray(calib_idx, dtype=np.int64), extra])
