"""Image folders as calibration data.

Each image is decoded with Pillow, converted to RGB (or to L when the model takes one channel),
resized with bilinear filtering to the target size when it differs, and turned into float32:

1. pixels are scaled to [0, 1] (divided by 255) unless ``raw_pixels``;
2. ``(x - mean) / std`` per channel, ``mean`` and ``std`` given in R,G,B order (one value is
   used for every channel);
3. with ``bgr`` the channels are then reordered to B,G,R;
4. laid out as the input wants: ``nchw`` or ``nhwc`` (inferred from the input shape unless given:
   a dim of size 3 or 1 at position 1 means nchw, at position 3 nhwc).

The target size is ``--image-size`` when given, else the model's static H and W; when the model's
size is dynamic the images must all have one size (checked at open from the image headers).

Labels: when every image sits inside a sub-folder of the data folder, the label of an image is the
index of its top-level sub-folder in the sorted list of those folder names (torchvision
``ImageFolder`` order: CIFAR-10's airplane..truck become 0..9). Otherwise there are no labels.

EXIF orientation is not applied (as in torchvision's PIL loader).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DataError, UsageError
from .sources import CalibrationData, ImageOptions, InputSpec, format_dims, is_static

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_LAYOUTS = ("nchw", "nhwc")
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def infer_layout(spec: InputSpec) -> str | None:
    """``"nchw"`` if dim 1 is 3 or 1, else ``"nhwc"`` if dim 3 is 3 or 1, else None (4-D inputs only)."""
    if len(spec.shape) != 4:
        return None
    for layout, axis in (("nchw", 1), ("nhwc", 3)):
        dim = spec.shape[axis]
        if is_static(dim) and int(dim) in (1, 3):
            return layout
    return None


class ImageData(CalibrationData):
    """Images decoded on demand; ``classes`` names the class folders (label order) or is None."""

    kind = "images"

    def __init__(
        self,
        root: Path,
        spec: InputSpec,
        files: list[Path],
        labels: np.ndarray | None,
        classes: list[str] | None,
        *,
        channels: int,
        size: tuple[int, int],
        layout: str,
        options: ImageOptions,
    ):
        super().__init__(root, [spec], len(files), labels)
        self.files = files
        self.classes = classes
        self.channels = channels
        self.size = size
        self.layout = layout
        self._mode = "L" if channels == 1 else "RGB"
        self._scale = not options.raw_pixels
        self._mean = None if options.mean is None else np.asarray(options.mean, dtype=np.float32)
        self._std = None if options.std is None else np.asarray(options.std, dtype=np.float32)
        self._bgr = options.bgr and channels == 3

    def read_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as a float32 (H, W, C) array, preprocessed but not laid out."""
        path = self.files[index]
        height, width = self.size
        try:
            with Image.open(path) as img:
                img = img.convert(self._mode)
                if img.size != (width, height):
                    img = img.resize((width, height), _BILINEAR)
                x = np.asarray(img, dtype=np.float32)
        except _READ_ERRORS as exc:
            raise DataError(f"cannot read image {path} ({exc})", note="remove or replace that file") from None
        if x.ndim == 2:
            x = x[:, :, np.newaxis]
        if self._scale:
            x = x / np.float32(255.0)
        if self._mean is not None:
            x = x - self._mean
        if self._std is not None:
            x = x / self._std
        if self._bgr:
            x = x[:, :, ::-1]
        return x

    def _load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        (spec,) = self.inputs
        height, width = self.size
        shape = (
            (len(idx), self.channels, height, width)
            if self.layout == "nchw"
            else (len(idx), height, width, self.channels)
        )
        out = np.empty(shape, dtype=spec.dtype)
        integer = spec.dtype.kind in "iu"
        for j, index in enumerate(idx):
            x = self.read_image(int(index))
            if integer:
                info = np.iinfo(spec.dtype)
                x = np.clip(np.rint(x), info.min, info.max)
            out[j] = x.transpose(2, 0, 1) if self.layout == "nchw" else x
        return {spec.name: out}


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image {path} ({exc})", note="remove or replace that file") from None
    return height, width


def _check_channel_values(option: str, values: tuple | None, channels: int, spec: InputSpec) -> np.ndarray | None:
    if values is None:
        return None
    if len(values) not in (1, channels):
        raise UsageError(
            f"{option} has {len(values)} values but input {spec.name!r} takes {channels} channel"
            f"{'s' if channels != 1 else ''}",
            note=f"give {channels} comma-separated values (R,G,B order) or one for all channels"
            if channels == 3
            else "give one value for the grayscale channel",
        )
    return np.asarray(values, dtype=np.float32)


def open_images(
    root: Path,
    rel_files: Sequence[tuple[tuple[str, ...], Path]],
    inputs: list[InputSpec],
    options: ImageOptions,
    num_samples: int | None,
    seed: int = 0,
) -> ImageData:
    """Image data for ``inputs`` from ``rel_files`` ((parts relative to ``root``, path), sorted);
    ``num_samples`` picks that many files at random (seeded), so every class folder is represented."""
    if len(inputs) != 1:
        raise DataError(
            f"{root} holds images, which can feed only a single-input model; the model has inputs "
            f"{', '.join(repr(s.name) for s in inputs)}",
            note="use .npz files with one array per input name",
        )
    (spec,) = inputs
    if len(spec.shape) != 4:
        raise DataError(
            f"input {spec.name!r} has shape {format_dims(spec.shape)}, but images need a 4-D input "
            f"(N, C, H, W) or (N, H, W, C); data: {root}",
            note="write the samples to .npz or .npy files instead",
        )

    # Layout and channels.
    layout = options.layout.lower() if isinstance(options.layout, str) else options.layout
    if layout is None:
        layout = infer_layout(spec)
        if layout is None:
            raise DataError(
                f"cannot tell the layout of input {spec.name!r} with shape {format_dims(spec.shape)}: "
                "no dim of size 3 or 1 at position 1 (nchw) or 3 (nhwc)",
                note="pass --layout nchw or --layout nhwc",
            )
    elif layout not in _LAYOUTS:
        raise UsageError(f"--layout must be nchw or nhwc, got {options.layout!r}")
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "nchw" else (3, 1, 2)
    c_dim = spec.shape[c_axis]
    if is_static(c_dim) and int(c_dim) not in (1, 3):
        raise DataError(
            f"input {spec.name!r} with shape {format_dims(spec.shape)} ({layout}) takes {int(c_dim)} "
            "channels, but images give 3 (RGB) or 1 (grayscale)",
            note="check --layout, or write the samples to .npz or .npy files",
        )
    channels = int(c_dim) if is_static(c_dim) else 3

    # Dtype.
    if spec.dtype.kind in "iu":
        if not options.raw_pixels or options.mean is not None or options.std is not None:
            raise UsageError(
                f"input {spec.name!r} expects {spec.dtype} pixels, so images can feed it only as raw pixels "
                "(--raw-pixels, without --mean or --std)",
                note="pass --raw-pixels and no --mean or --std",
            )
    elif spec.dtype.kind != "f":
        raise DataError(f"input {spec.name!r} expects {spec.dtype} data, which images cannot give ({root})")

    # Normalisation values.
    _check_channel_values("--mean", options.mean, channels, spec)
    std = _check_channel_values("--std", options.std, channels, spec)
    if std is not None and not np.all(std != 0):
        raise UsageError(f"--std must not contain 0, got {','.join(str(v) for v in options.std)}")

    # Target size.
    model_size = (spec.shape[h_axis], spec.shape[w_axis])
    size = None
    if options.size is not None:
        try:
            size = tuple(int(v) for v in options.size)
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise UsageError(f"--image-size must be two positive integers (H, W), got {options.size!r}")
        for dim, value, what in zip(model_size, size, ("height", "width")):
            if is_static(dim) and int(dim) != value:
                raise UsageError(
                    f"--image-size {size[0]},{size[1]} does not match input {spec.name!r}, whose {what} is "
                    f"fixed at {int(dim)} (shape {format_dims(spec.shape)})",
                    note="drop --image-size to use the model's size",
                )
    elif all(is_static(d) for d in model_size):
        size = (int(model_size[0]), int(model_size[1]))

    # Labels from class folders, over all files (so --num-samples does not change the indices).
    classes = None
    labels = None
    if rel_files and all(len(rel) >= 2 for rel, _ in rel_files):
        classes = sorted({rel[0] for rel, _ in rel_files})
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[rel[0]] for rel, _ in rel_files], dtype=np.int64)

    files = [path for _, path in rel_files]
    if num_samples is not None and num_samples < len(files):
        # a seeded random choice, kept in file order: the first N of a class-folder tree would be one class
        pick = np.sort(np.random.default_rng(seed).choice(len(files), num_samples, replace=False))
        files = [files[i] for i in pick]
        if labels is not None:
            labels = labels[pick]

    if size is None:  # dynamic model size, no --image-size: use the images' own (single) size
        first = _image_size(files[0])
        for path in files[1:]:
            other = _image_size(path)
            if other != first:
                raise DataError(
                    f"images differ in size: {files[0]} is {first[0]}x{first[1]} (HxW) but {path} is "
                    f"{other[0]}x{other[1]}, and input {spec.name!r} {format_dims(spec.shape)} has no fixed size",
                    note="pass --image-size H,W to resize them",
                )
        for dim, value, what in zip(model_size, first, ("height", "width")):
            if is_static(dim) and int(dim) != value:
                raise DataError(
                    f"images such as {files[0]} are {first[0]}x{first[1]} (HxW) but input {spec.name!r} has "
                    f"{what} fixed at {int(dim)} (shape {format_dims(spec.shape)})",
                    note="pass --image-size H,W to resize them",
                )
        size = first

    return ImageData(
        root, spec, files, labels, classes, channels=channels, size=size, layout=layout, options=options
    )
