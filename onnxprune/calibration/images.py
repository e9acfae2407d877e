"""Image folders as calibration data.

Each image is decoded with Pillow, converted to RGB (or to L when the model takes one channel),
fitted to the target size H x W as ``resize`` says (Pillow's bilinear filter), and turned into float32:

* ``stretch`` (default): resized to H x W, whatever its aspect ratio.
* ``letterbox`` (ultralytics ``LetterBox``): scaled by ``r = min(H/h, W/w)`` to
  ``round(w*r) x round(h*r)``, centred on an H x W canvas of ``pad_value``:
  ``dw, dh = (W - new_w)/2, (H - new_h)/2``, ``top, bottom = round(dh - 0.1), round(dh + 0.1)``, same for
  left/right. With ``size_multiple`` m, H and W are first rounded up to multiples of m (as ultralytics rounds
  ``imgsz`` up to the stride).
* ``keep-ratio`` (PaddleOCR recogniser): the height becomes H and the width
  ``ceil(H*w/h)`` rounded up to a multiple of ``size_multiple``, capped at W; the image is then
  right-padded with ``pad_value`` to the width W. W is ``--image-size``'s width or the model's static
  width; when neither is known (dynamic width, ``--image-size`` not given) it is the widest resized image
  of the data set (read from the image headers at open), so every sample has one shape.

``pad_value`` is a pixel value in 0..255 units (a float) that goes through the same scaling and
normalisation as the image pixels. Default: 114 with ``letterbox`` (ultralytics' grey), and with
``keep-ratio`` the value that becomes 0 after normalisation (PaddleOCR pads the normalised image with 0),
i.e. ``mean * 255`` per channel (``mean`` without scaling; 0 without ``mean``).

Then:

1. pixels are scaled to [0, 1] (divided by 255) unless ``raw_pixels``;
2. ``(x - mean) / std`` per channel, ``mean`` and ``std`` given in R,G,B order (one value is
   used for every channel);
3. with ``bgr`` the channels are then reordered to B,G,R;
4. laid out as the input wants: ``nchw`` or ``nhwc`` (inferred from the input shape unless given:
   a dim of size 3 or 1 at position 1 means nchw, at position 3 nhwc).

The target size is ``--image-size`` when given, else the model's static H and W; when the model's
size is dynamic and no ``--image-size`` is given, ``stretch`` needs the images to have one size (checked at
open from the image headers), ``letterbox`` refuses, and ``keep-ratio`` needs the model's height to be static.

Labels: when every image sits inside a sub-folder of the data folder, the label of an image is the
index of its top-level sub-folder in the sorted list of those folder names (torchvision
``ImageFolder`` order: CIFAR-10's airplane..truck become 0..9). Otherwise there are no labels.

EXIF orientation is not applied (as in torchvision's PIL loader).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DataError, UsageError
from .sources import CalibrationData, ImageOptions, InputSpec, format_dims, is_static

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_LAYOUTS = ("nchw", "nhwc")
RESIZE_MODES = ("stretch", "letterbox", "keep-ratio")
LETTERBOX_PAD = 114.0  # ultralytics' grey
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
        pad: np.ndarray | None = None,
        max_width: int | None = None,
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
        self.resize = options.resize
        self.size_multiple = int(options.size_multiple)
        self.max_width = max_width  # keep-ratio: the cap of the resized width (None: no cap)
        self._pad = pad  # (C,) float32 pixel values of the padding, before scaling (letterbox, keep-ratio)

    def fitted_width(self, height: int, width: int) -> int:
        """keep-ratio: the width an image of ``height`` x ``width`` is resized to (before padding)."""
        return keep_ratio_width(height, width, self.size[0], self.size_multiple, self.max_width)

    def _fit(self, img: Image.Image) -> np.ndarray:
        """``img`` fitted to ``self.size`` as ``self.resize`` says, as a float32 (H, W[, C]) array of pixels."""
        height, width = self.size
        w0, h0 = img.size
        if self.resize == "stretch":
            if img.size != (width, height):
                img = img.resize((width, height), _BILINEAR)
            return np.asarray(img, dtype=np.float32)
        if self.resize == "letterbox":
            new_w, new_h, top, left = letterbox_geometry(h0, w0, height, width)
        else:  # keep-ratio
            new_w, new_h, top, left = self.fitted_width(h0, w0), height, 0, 0
        if (new_w, new_h) != (w0, h0):
            img = img.resize((new_w, new_h), _BILINEAR)
        x = np.asarray(img, dtype=np.float32)
        canvas = np.empty((height, width, self.channels), dtype=np.float32)
        canvas[...] = self._pad
        canvas[top : top + new_h, left : left + new_w] = x.reshape(new_h, new_w, self.channels)
        return canvas

    def read_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as a float32 (H, W, C) array, preprocessed but not laid out."""
        path = self.files[index]
        try:
            with Image.open(path) as img:
                x = self._fit(img.convert(self._mode))
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


def letterbox_geometry(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, top, left) of an h x w image letterboxed into height x width (ultralytics' rounding)."""
    r = min(height / h, width / w)
    new_w, new_h = max(1, int(round(w * r))), max(1, int(round(h * r)))
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    return new_w, new_h, int(round(dh - 0.1)), int(round(dw - 0.1))


def keep_ratio_width(h: int, w: int, height: int, multiple: int = 1, max_width: int | None = None) -> int:
    """keep-ratio: ``ceil(height * w / h)`` rounded up to a multiple of ``multiple``, at most ``max_width``."""
    new_w = max(1, math.ceil(height * (w / float(h))))  # PaddleOCR's expression
    new_w = _round_up(new_w, multiple)
    return new_w if max_width is None else min(new_w, max_width)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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
    resize, multiple, pad = _check_resize(options, channels)

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

    max_width = None
    if resize == "letterbox":
        if size is None:
            raise UsageError(
                f"--resize letterbox needs --image-size H,W: input {spec.name!r} {format_dims(spec.shape)} has no "
                "fixed height and width to letterbox into",
                note="for example --image-size 640,640 --resize letterbox",
            )
        canvas = (_round_up(size[0], multiple), _round_up(size[1], multiple))
        if clash := _fixed_clash(model_size, canvas):
            raise UsageError(
                f"--size-multiple {multiple} rounds the letterbox canvas {size[0]}x{size[1]} (HxW) up to "
                f"{canvas[0]}x{canvas[1]}, but input {spec.name!r} has {clash[0]} fixed at {clash[1]}",
                note="drop --size-multiple or choose one that divides the model's size",
            )
        size = canvas
    elif resize == "keep-ratio":
        height = size[0] if size is not None else (int(model_size[0]) if is_static(model_size[0]) else None)
        if height is None:
            raise UsageError(
                f"--resize keep-ratio needs --image-size H,W: input {spec.name!r} {format_dims(spec.shape)} has no "
                "fixed height",
                note="for example --image-size 48,320 --resize keep-ratio (H, then the maximum width W)",
            )
        max_width = size[1] if size is not None else (int(model_size[1]) if is_static(model_size[1]) else None)
        if max_width is None:  # dynamic width, no --image-size: pad to the widest resized image of the set
            width = max(keep_ratio_width(*_image_size(path), height, multiple) for path in files)
        else:
            width = max_width
        size = (height, width)
    elif size is None:  # dynamic model size, no --image-size: use the images' own (single) size
        first = _image_size(files[0])
        for path in files[1:]:
            other = _image_size(path)
            if other != first:
                raise DataError(
                    f"images differ in size: {files[0]} is {first[0]}x{first[1]} (HxW) but {path} is "
                    f"{other[0]}x{other[1]}, and input {spec.name!r} {format_dims(spec.shape)} has no fixed size",
                    note="pass --image-size H,W to resize them (with --resize letterbox or keep-ratio to keep "
                    "their aspect ratio)",
                )
        if clash := _fixed_clash(model_size, first):
            raise DataError(
                f"images such as {files[0]} are {first[0]}x{first[1]} (HxW) but input {spec.name!r} has "
                f"{clash[0]} fixed at {clash[1]} (shape {format_dims(spec.shape)})",
                note="pass --image-size H,W to resize them",
            )
        size = first

    return ImageData(
        root, spec, files, labels, classes, channels=channels, size=size, layout=layout, options=options,
        pad=pad, max_width=max_width,
    )


def _fixed_clash(model_size: tuple, size: tuple[int, int]) -> tuple[str, int] | None:
    """("height" or "width", its fixed value) of the first static model dim that ``size`` (H, W) does not match."""
    for dim, value, what in zip(model_size, size, ("height", "width")):
        if is_static(dim) and int(dim) != value:
            return what, int(dim)
    return None


def _check_resize(options: ImageOptions, channels: int) -> tuple[str, int, np.ndarray | None]:
    """(resize mode, size multiple, (C,) pad pixel values or None) of ``options``; UsageError when bad."""
    resize = options.resize
    if resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    multiple = options.size_multiple
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise UsageError(f"--size-multiple must be a positive integer (pixels), got {multiple!r}",
                         note="for example --size-multiple 32 for detectors, 4 or 8 for text recognisers")
    value = options.pad_value
    if value is not None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if not 0.0 <= value <= 255.0:
            raise UsageError(
                f"--pad-value must be a pixel value in 0..255 (before scaling and --mean/--std), got {options.pad_value!r}",
                note="for example --pad-value 114 (ultralytics' grey), or 127.5, which --mean 0.5 --std 0.5 make 0",
            )
    if resize == "stretch":
        given = [name for name, on in (("--pad-value", value is not None), ("--size-multiple", multiple != 1)) if on]
        if given:
            raise UsageError(
                f"{' and '.join(given)} apply only with --resize letterbox or keep-ratio; --resize stretch does not pad",
                note="add --resize letterbox or --resize keep-ratio, or drop those options",
            )
        return resize, int(multiple), None
    if value is not None:
        pad = np.full(channels, value, dtype=np.float32)
    elif resize == "letterbox":
        pad = np.full(channels, LETTERBOX_PAD, dtype=np.float32)
    else:  # keep-ratio: the pixel value that normalisation turns into 0, as PaddleOCR pads
        mean = np.zeros(1) if options.mean is None else np.asarray(options.mean, dtype=np.float64)
        pad = np.broadcast_to(mean * (1.0 if options.raw_pixels else 255.0), (channels,)).astype(np.float32)
    return resize, int(multiple), pad
