"""Calibration data: find the samples behind ``--data PATH`` and load them lazily, batch by batch.

``--data`` can be

* a ``.npz`` file, or a folder of ``.npz`` files: arrays keyed by model input name, batch first;
  an extra array named ``label`` or ``labels`` (that is not an input name) gives integer labels;
* a folder of ``.npy`` files (single-input models only), each one sample or a batch;
* a folder of images (jpg, jpeg, png, bmp), searched recursively; when every image sits in a class
  sub-folder, its label is the index of that folder in the sorted list of class folder names
  (see :mod:`onnxprune.calibration.images`).

Folders are searched recursively; files and folders whose names start with ``.`` are skipped.
Samples are ordered by sorted file path (path components compared in turn), then by their
order inside each file. ``num_samples`` keeps the first N samples of that order (of images: N at random).

Opening reads only metadata (file lists, ``.npy`` headers, ``.npz`` member headers and label
arrays); sample data is read when :meth:`CalibrationData.load` asks for it, with at most one
``.npz`` file (or one memory-mapped ``.npy`` file) cached, so memory does not grow with the
number of samples beyond per-file indexes (and the labels).
"""
from __future__ import annotations

import ast
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import DataError, UsageError

NPZ_SUFFIX = ".npz"
NPY_SUFFIX = ".npy"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LABEL_KEYS = ("label", "labels")

_FORMATS_HELP = (
    "--data takes a .npz file, or a folder of .npz files, of .npy files or of images "
    "(jpg, jpeg, png, bmp)"
)


# --------------------------------------------------------------------------------------------
# Public value types


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype and dims (int static; None or str dynamic; dims[0] is batch)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def sample_shape(self) -> tuple:
        """The dims after the batch dim."""
        return self.shape[1:]


@dataclass(frozen=True)
class ImageOptions:
    """How images become model input (see :mod:`onnxprune.calibration.images`)."""

    size: tuple[int, int] | None = None  # (H, W)
    raw_pixels: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None  # "nchw" | "nhwc" | None (infer)
    bgr: bool = False
    resize: str = "stretch"  # "stretch" | "letterbox" | "keep-ratio"
    pad_value: float | None = None  # pixel value (0-255 units, before scaling); None: the mode's default
    size_multiple: int = 1  # letterbox: canvas rounded up to it; keep-ratio: each resized width rounded up to it

    def given(self) -> list[str]:
        """The command-line options that differ from their defaults (for "only for images" errors)."""
        names = []
        if self.size is not None:
            names.append("--image-size")
        if self.raw_pixels:
            names.append("--raw-pixels")
        if self.mean is not None:
            names.append("--mean")
        if self.std is not None:
            names.append("--std")
        if self.layout is not None:
            names.append("--layout")
        if self.bgr:
            names.append("--bgr")
        if self.resize != "stretch":
            names.append("--resize")
        if self.pad_value is not None:
            names.append("--pad-value")
        if self.size_multiple != 1:
            names.append("--size-multiple")
        return names


# --------------------------------------------------------------------------------------------
# Option parsing


def parse_image_size(text: str) -> tuple[int, int]:
    """``"32"`` -> ``(32, 32)``; ``"32,48"`` -> ``(32, 48)`` (H, W). UsageError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    values = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value <= 0:
            values = []
            break
        values.append(value)
    if len(values) not in (1, 2):
        raise UsageError(
            f"--image-size expects H or H,W as positive integers, got {text!r}",
            note="for example --image-size 224 or --image-size 224,320",
        )
    return (values[0], values[-1])


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``. UsageError naming the option ``name`` otherwise."""
    values = []
    for part in str(text).split(","):
        try:
            value = float(part.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UsageError(
                f"{name} expects comma-separated finite numbers, got {text!r}",
                note=f"for example {name} 0.485,0.456,0.406 (or one number for every channel)",
            )
        values.append(value)
    return tuple(values)


# --------------------------------------------------------------------------------------------
# Helpers shared with images.py


def is_static(dim) -> bool:
    """A dim with a fixed positive size (ints <= 0 are treated as unknown, as ONNX does)."""
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and int(dim) > 0


def format_dims(dims: Sequence) -> str:
    """``(N, 3, 32, 32)``-style text; dynamic dims print their name or ``?``."""
    parts = []
    for dim in dims:
        if is_static(dim):
            parts.append(str(int(dim)))
        elif isinstance(dim, str) and dim:
            parts.append(dim)
        else:
            parts.append("?")
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _dims_match(actual: Sequence[int], expected: Sequence) -> bool:
    return len(actual) == len(expected) and all(
        not is_static(e) or int(a) == int(e) for a, e in zip(actual, expected)
    )


def _input_names(inputs: Sequence[InputSpec]) -> str:
    return ", ".join(repr(spec.name) for spec in inputs)


# --------------------------------------------------------------------------------------------
# The data set


class CalibrationData:
    """An indexable, lazily loaded set of samples for a model's inputs.

    ``inputs`` are the model inputs fed, ``labels`` is an ``(n,)`` int64 array or None, ``kind`` is
    ``"npz"``, ``"npy"`` or ``"images"`` and ``path`` is the ``--data`` path.
    """

    kind: str = ""

    def __init__(self, path: Path, inputs: Sequence[InputSpec], count: int, labels: np.ndarray | None):
        self.path = Path(path)
        self.inputs: list[InputSpec] = list(inputs)
        self.labels: np.ndarray | None = labels
        self._count = int(count)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        labels = "no labels" if self.labels is None else "labels"
        return f"<CalibrationData {self.kind} {str(self.path)!r}: {self._count} samples, {labels}>"

    # -- loading

    def load(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The samples ``indices`` (in that order) as one batch per input name.

        Each array is C-contiguous, of the input's dtype, with shape ``(len(indices), ...)``.
        """
        return self._load(self._check_indices(indices))

    def batches(
        self, indices: Sequence[int], batch_size: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(indices of the batch, feed)`` for consecutive chunks of ``indices``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
        idx = self._check_indices(indices)
        for start in range(0, len(idx), int(batch_size)):
            chunk = idx[start : start + int(batch_size)]
            yield chunk, self._load(chunk)

    def split(self, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(calibration indices, held-out indices)``: a seeded random share ``holdout`` held out.

        Both are sorted int64 arrays, disjoint, covering all samples. ``holdout`` must be in
        [0, 1); 0 gives an empty held-out set; any other share holds out at least one sample
        when there are two or more, and always leaves at least one calibration sample.
        """
        try:
            share = float(holdout)
        except (TypeError, ValueError):
            share = math.nan
        if not 0.0 <= share < 1.0:
            raise UsageError(
                f"--holdout must be a fraction in [0, 1), got {holdout!r}",
                note="for example --holdout 0.1 keeps 10% of the samples for the fidelity check",
            )
        n = len(self)
        n_held = 0
        if share > 0.0 and n >= 2:
            n_held = min(max(1, int(round(share * n))), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        held = np.sort(order[:n_held]).astype(np.int64)
        calib = np.sort(order[n_held:]).astype(np.int64)
        return calib, held

    # -- for subclasses

    def _load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be a 1-D sequence of integers, got {idx.dtype} of shape {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        if idx.min() < 0 or idx.max() >= self._count:
            bad = int(idx[(idx < 0) | (idx >= self._count)][0])
            raise IndexError(f"sample index {bad} out of range for {self._count} samples")
        return idx


# --------------------------------------------------------------------------------------------
# .npz / .npy


@dataclass
class _Member:
    """One array of one file feeding one input."""

    key: str | None  # npz member name; None for .npy
    shape: tuple
    dtype: np.dtype
    batched: bool  # False: the file holds one sample without a batch dim


@dataclass
class _ArrayFile:
    path: Path
    count: int  # samples used from this file (after num_samples)
    members: dict  # input name -> _Member


def _read_npy_header(fp) -> tuple[tuple, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fp)
    elif version == (3, 0):  # like 2.0, utf-8 encoded (no public reader)
        (length,) = struct.unpack("<I", fp.read(4))
        header = ast.literal_eval(fp.read(length).decode("utf-8"))
        shape, dtype = header["shape"], fmt.descr_to_dtype(header["descr"])
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(d) for d in shape), np.dtype(dtype)


def npz_headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """(shape, dtype) of every array of the .npz at ``path``, read from their headers (no array is loaded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            headers = {}
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(NPY_SUFFIX):
                    raise DataError(
                        f"{path}: member {info.filename!r} is not a numpy array; a .npz must hold only arrays",
                        note="write it with np.savez(path, **{input_name: batch})",
                    )
                with zf.open(info) as fp:
                    headers[info.filename[: -len(NPY_SUFFIX)]] = _read_npy_header(fp)
            return headers
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, KeyError, struct.error, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None


def _check_dtype(where: str, spec: InputSpec, dtype: np.dtype) -> None:
    want = spec.dtype
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise DataError(f"{where} has dtype {dtype}; only plain numeric arrays are supported")
    if want.kind == "f":
        if dtype.kind == "f":
            return
        if dtype.kind in "biu":
            raise DataError(
                f"{where} holds {'bool' if dtype.kind == 'b' else 'integer'} data ({dtype}) "
                f"but input {spec.name!r} expects {want}",
                note=f"convert it to float first (e.g. arr.astype(np.{want.name})), "
                "with the model's preprocessing applied",
            )
    elif want.kind in "iu":
        if dtype.kind in "iu":
            return
    elif dtype.kind == want.kind and (want.kind == "b" or dtype == want):
        return
    raise DataError(f"{where} holds {dtype} data but input {spec.name!r} expects {want}")


def _classify_member(where: str, spec: InputSpec, shape: tuple) -> tuple[int, bool]:
    """(sample count, batched) of an array of ``shape`` for ``spec``; DataError when it cannot fit."""
    sample = spec.sample_shape
    if not spec.shape:  # rank unknown: anything batch-first
        if len(shape) >= 1:
            return shape[0], True
    elif len(shape) == len(sample) + 1 and _dims_match(shape[1:], sample):
        return shape[0], True
    elif len(shape) == len(sample) and _dims_match(shape, sample):
        return 1, False
    expected = (
        f"{format_dims(spec.shape)} (batch first) or one sample {format_dims(sample)}"
        if spec.shape
        else "an array with a batch dim"
    )
    raise DataError(f"{where} has shape {tuple(shape)} but input {spec.name!r} expects {expected}")


class _ArrayData(CalibrationData):
    """Shared loading for .npz and .npy files: per-file counts, one cached file."""

    def __init__(self, path, inputs, files: list[_ArrayFile], labels):
        self._files = files
        self._offsets = np.cumsum([0] + [f.count for f in files]).astype(np.int64)
        # Per input: the sample shape (dynamic dims resolved; agreed on by all files).
        self._sample_shapes: dict[str, tuple] = {}
        for spec in inputs:
            member = files[0].members[spec.name]
            self._sample_shapes[spec.name] = member.shape[1:] if member.batched else member.shape
        self._cache_index: int | None = None
        self._cache: dict[str, np.ndarray] = {}
        super().__init__(path, inputs, int(self._offsets[-1]), labels)

    def _open_file(self, i: int) -> dict[str, np.ndarray]:
        """input name -> array with a batch dim, for file ``i`` (cached for the last file)."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        """Pickled (e.g. for a Ray task) without the cached file: the receiver reads it from its path."""
        state = self.__dict__.copy()
        state["_cache_index"], state["_cache"] = None, {}
        return state

    def _file_arrays(self, i: int) -> dict[str, np.ndarray]:
        if self._cache_index != i:
            self._cache_index, self._cache = None, {}
            self._cache = self._open_file(i)
            self._cache_index = i
        return self._cache

    def _where(self, afile: _ArrayFile, spec: InputSpec) -> str:
        key = afile.members[spec.name].key
        return f"{afile.path}: array {key!r}" if key is not None else f"{afile.path}"

    def _load(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        out = {
            spec.name: np.empty((len(idx),) + self._sample_shapes[spec.name], dtype=spec.dtype)
            for spec in self.inputs
        }
        file_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for i in np.unique(file_of):
            afile = self._files[int(i)]
            positions = np.nonzero(file_of == i)[0]
            rows = idx[positions] - self._offsets[i]
            arrays = self._file_arrays(int(i))
            for spec in self.inputs:
                chunk = np.asarray(arrays[spec.name][rows])
                out[spec.name][positions] = _convert(self._where(afile, spec), spec, chunk, rows)
        return out


def _convert(where: str, spec: InputSpec, chunk: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Check ``chunk`` (rows ``rows`` of a file) for bad values and cast it to the input's dtype."""
    want = spec.dtype
    if chunk.dtype.kind == "f":
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            row = int(rows[np.argmin(finite)])
            raise DataError(
                f"{where} has NaN or Inf values (sample {row} of that file)",
                note="fix or drop those samples; calibration needs finite inputs",
            )
        with np.errstate(over="ignore"):
            cast = chunk.astype(want, copy=False)
        if want.kind == "f" and cast.dtype.itemsize < chunk.dtype.itemsize and not np.isfinite(cast).all():
            raise DataError(f"{where} has values too large for input {spec.name!r} of dtype {want}")
        return cast
    if want.kind in "iu" and chunk.size and not np.can_cast(chunk.dtype, want, casting="safe"):
        info = np.iinfo(want)
        low, high = int(chunk.min()), int(chunk.max())
        if low < info.min or high > info.max:
            raise DataError(
                f"{where} has values in [{low}, {high}], outside the range of input {spec.name!r} ({want})"
            )
    return chunk.astype(want, copy=False)


class NpzData(_ArrayData):
    kind = "npz"

    def _open_file(self, i: int) -> dict[str, np.ndarray]:
        afile = self._files[i]
        try:
            with np.load(afile.path, allow_pickle=False) as archive:
                arrays = {}
                for name, member in afile.members.items():
                    arr = archive[member.key]
                    arrays[name] = arr if member.batched else arr[np.newaxis]
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {afile.path} ({exc})") from None


class NpyData(_ArrayData):
    kind = "npy"

    def _open_file(self, i: int) -> dict[str, np.ndarray]:
        afile = self._files[i]
        try:
            arr = np.load(afile.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {afile.path} ({exc})") from None
        ((name, member),) = afile.members.items()
        return {name: arr if member.batched else arr[np.newaxis]}


class _ShapeAgreement:
    """Dynamic dims may take any size, but the same one in every file."""

    def __init__(self):
        self._seen: dict[str, tuple[tuple, Path]] = {}

    def check(self, where: str, path: Path, spec: InputSpec, member: _Member) -> None:
        sample = member.shape[1:] if member.batched else member.shape
        if spec.name not in self._seen:
            self._seen[spec.name] = (sample, path)
            return
        first, first_path = self._seen[spec.name]
        if first != sample:
            raise DataError(
                f"{where} has samples of shape {sample} but {first_path} has {first} "
                f"(input {spec.name!r}); samples must have one shape in all files",
                note="resize or pad the data to one shape",
            )


def _parse_labels(path: Path, key: str, values: np.ndarray, count: int) -> np.ndarray:
    where = f"{path}: array {key!r}"
    if values.dtype.kind == "f":
        if not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
            raise DataError(
                f"{where} holds non-integer labels ({values.dtype})",
                note="labels must be integer class indices (use argmax for one-hot or scores)",
            )
    elif values.dtype.kind not in "iu":
        raise DataError(f"{where} holds {values.dtype} labels; labels must be integer class indices")
    if values.shape == () and count == 1:
        values = values.reshape(1)
    elif values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise DataError(
            f"{where} has shape {values.shape}; labels must be a 1-D array of class indices",
            note="use argmax for one-hot labels",
        )
    if len(values) != count:
        raise DataError(f"{where} has {len(values)} labels for {count} samples")
    return values.astype(np.int64)


def _open_npz(root: Path, paths: list[Path], inputs: list[InputSpec], num_samples: int | None) -> NpzData:
    names = [spec.name for spec in inputs]
    expected = ", ".join(repr(n) for n in names)
    label_keys = [k for k in LABEL_KEYS if k not in names]
    save_note = "save with np.savez(path, **{" + ", ".join(f"{n!r}: batch" for n in names) + "})"
    files: list[_ArrayFile] = []
    labels: list[np.ndarray] = []
    first_labelled: bool | None = None
    first_path: Path | None = None
    agreement = _ShapeAgreement()
    total = 0
    for path in paths:
        if num_samples is not None and total >= num_samples:
            break
        headers = npz_headers(path)
        missing = [n for n in names if n not in headers]
        if missing:
            found = ", ".join(repr(k) for k in headers) or "no arrays"
            raise DataError(
                f"{path} has no array for input {', '.join(repr(m) for m in missing)}; "
                f"expected arrays {expected} (found {found})",
                note=save_note,
            )
        present_labels = [k for k in label_keys if k in headers]
        unknown = [k for k in headers if k not in names and k not in label_keys]
        if unknown:
            raise DataError(
                f"{path} has arrays {', '.join(repr(k) for k in unknown)} that are not model inputs; "
                f"expected arrays {expected} and optionally 'label' or 'labels'",
                note=save_note,
            )
        if len(present_labels) > 1:
            raise DataError(f"{path} has both 'label' and 'labels' arrays; keep one")
        members = {}
        counts = {}
        for spec in inputs:
            shape, dtype = headers[spec.name]
            where = f"{path}: array {spec.name!r}"
            _check_dtype(where, spec, dtype)
            count, batched = _classify_member(where, spec, shape)
            member = _Member(spec.name, shape, dtype, batched)
            agreement.check(where, path, spec, member)
            members[spec.name] = member
            counts[spec.name] = count
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k!r}: {v}" for k, v in counts.items())
            raise DataError(f"{path} has different sample counts per input ({detail}); they must be equal")
        count = next(iter(counts.values()))
        labelled = bool(present_labels)
        if first_labelled is None:
            first_labelled, first_path = labelled, path
        elif labelled != first_labelled:
            with_, without = (path, first_path) if labelled else (first_path, path)
            raise DataError(
                f"{with_} has labels but {without} has none; give every file labels or none",
            )
        if labelled:
            key = present_labels[0]
            try:
                with np.load(path, allow_pickle=False) as archive:
                    values = archive[key]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"cannot read {path} ({exc})") from None
            values = _parse_labels(path, key, values, count)
        if num_samples is not None:
            count = min(count, num_samples - total)
        if labelled:
            labels.append(values[:count])
        total += count
        if count:
            files.append(_ArrayFile(path, count, members))
    if total == 0:
        raise DataError(f"{root} holds no samples (every array has a batch dim of 0)")
    return NpzData(root, inputs, files, np.concatenate(labels) if first_labelled else None)


def _open_npy(root: Path, paths: list[Path], inputs: list[InputSpec], num_samples: int | None) -> NpyData:
    if len(inputs) != 1:
        raise DataError(
            f"{root} holds .npy files, which can feed only a single-input model; "
            f"the model has inputs {_input_names(inputs)}",
            note="use .npz files with one array per input name",
        )
    (spec,) = inputs
    files: list[_ArrayFile] = []
    agreement = _ShapeAgreement()
    total = 0
    for path in paths:
        if num_samples is not None and total >= num_samples:
            break
        try:
            with open(path, "rb") as fp:
                shape, dtype = _read_npy_header(fp)
        except (OSError, ValueError, SyntaxError, KeyError, struct.error) as exc:
            raise DataError(f"{path} is not a readable .npy file ({exc})") from None
        where = str(path)
        _check_dtype(where, spec, dtype)
        count, batched = _classify_member(where, spec, shape)
        member = _Member(None, shape, dtype, batched)
        agreement.check(where, path, spec, member)
        if num_samples is not None:
            count = min(count, num_samples - total)
        total += count
        if count:
            files.append(_ArrayFile(path, count, {spec.name: member}))
    if total == 0:
        raise DataError(f"{root} holds no samples (every array has a batch dim of 0)")
    return NpyData(root, inputs, files, None)


# --------------------------------------------------------------------------------------------
# Entry point


def _list_files(root: Path) -> list[tuple[tuple[str, ...], Path]]:
    """(relative path parts, path) of every non-hidden file under ``root``, sorted by parts."""
    found = []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root).parts
        for name in filenames:
            if not name.startswith("."):
                found.append((rel + (name,), Path(dirpath) / name))
    found.sort(key=lambda item: item[0])
    return found


def _suffix_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == NPZ_SUFFIX:
        return "npz"
    if suffix == NPY_SUFFIX:
        return "npy"
    if suffix in IMAGE_SUFFIXES:
        return "images"
    return None


def open_data(
    path: str | os.PathLike,
    inputs: list[InputSpec],
    *,
    image_options: ImageOptions = ImageOptions(),
    num_samples: int | None = None,
    seed: int = 0,
) -> CalibrationData:
    """Open the calibration data at ``path`` for a model with ``inputs`` (metadata only; lazy).

    ``num_samples`` keeps the first N samples of .npz/.npy data, and N images chosen at random with ``seed``.
    """
    inputs = list(inputs)
    if not inputs:
        raise ValueError("open_data needs at least one model input")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1
    ):
        raise UsageError(f"--num-samples must be a positive integer, got {num_samples!r}")
    root = Path(path)
    if not root.exists():
        raise DataError(f"calibration data {str(root)!r} does not exist", note=_FORMATS_HELP)

    if root.is_file():
        kind = _suffix_kind(root)
        if kind is None:
            raise DataError(f"calibration data {root} is not a .npz, .npy or image file", note=_FORMATS_HELP)
        rel_files = [((root.name,), root)]
    else:
        by_kind: dict[str, list] = {"npz": [], "npy": [], "images": []}
        others: set[str] = set()
        for rel, file in _list_files(root):
            kind = _suffix_kind(file)
            if kind is None:
                others.add(file.suffix.lower() or file.name)
            else:
                by_kind[kind].append((rel, file))
        kinds = [k for k, v in by_kind.items() if v]
        if not kinds:
            seen = f"; found only {', '.join(sorted(others))} files" if others else " (the folder is empty)"
            raise DataError(f"no .npz, .npy or image files in {root}{seen}", note=_FORMATS_HELP)
        if len(kinds) > 1:
            counts = ", ".join(f"{len(by_kind[k])} {'image' if k == 'images' else '.' + k} files" for k in kinds)
            raise DataError(
                f"{root} mixes kinds of data ({counts}); use one kind per folder",
                note="point --data at a folder holding only one kind of file",
            )
        kind = kinds[0]
        rel_files = by_kind[kind]

    if kind != "images":
        extra = image_options.given()
        if extra:
            raise UsageError(
                f"{', '.join(extra)} apply only to image folders, but {root} holds .{kind} data",
                note="apply preprocessing when writing the arrays, or drop those options",
            )
    if kind == "npz":
        return _open_npz(root, [f for _, f in rel_files], inputs, num_samples)
    if kind == "npy":
        return _open_npy(root, [f for _, f in rel_files], inputs, num_samples)
    from .images import open_images

    return open_images(root, rel_files, inputs, image_options, num_samples, seed)
