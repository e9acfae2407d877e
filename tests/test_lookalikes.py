"""Lookalikes of real third-party exports (sample_models/lookalikes, both PyTorch exporters).

YOLOv8 (ultralytics), PP-OCRv4 text detector (DBNet), PP-OCRv4 recogniser (SVTR + CTC) and the
PP-OCR orientation classifier, tiny and with random weights, with dynamic batch, height and width
as the real exports have them. For every file:

- ``onnxprune analyze --shape INPUT:1x3xHxW`` works;
- keep-all reproduces the original outputs to float32 round-off at the calibration resolution and
  at another one;
- ``--target-flops 0.5`` gives a valid, smaller model with the same signature (height and width still
  symbolic) that runs at both resolutions and keeps 45-52 % of the multiply-adds counted at the
  calibration resolution.

Calibration data: the committed image folders ``<name>_calib/`` (``--image-size`` = their size, the
model's ``--mean``/``--std``) for the half-FLOPs runs; ``.npz`` for the keep-all runs (the committed
``<name>.npz`` for rec/cls, written from the images by a fixture for the detectors). The feeds that
compare outputs are the last images of each folder, preprocessed the way onnxprune reads images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxprune.calibration.collect import CalibrationSettings
from onnxprune.calibration.sources import ImageOptions
from onnxprune.compress import CompressOptions, compress
from onnxprune.graph.io import load_model
from onnxprune.metrics import count_model, count_params
from onnxprune.plan import Target

from conftest import SAMPLES, real_inputs, relative_error, run_cli, run_model

LOOK = SAMPLES / "lookalikes"
MODELS = sorted(LOOK.glob("*.onnx"))  # not full/ (the git-ignored benchmark variant)


@dataclass(frozen=True)
class Spec:
    input: str
    calib: tuple[int, int]          # (H, W) of the committed calibration images
    other: tuple[int, int]          # another resolution every model must run at
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    dynamic: tuple[int, ...]        # input axes that are symbolic
    npz: bool                       # <name>.npz is committed


SPECS = {
    "yolov8_like": Spec("images", (320, 320), (256, 384), None, None, (0, 2, 3), False),
    "ppocr_det_like": Spec("x", (320, 480), (256, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0, 2, 3),
                           False),
    "ppocr_rec_like": Spec("x", (48, 320), (48, 160), (0.5,), (0.5,), (0, 3), True),
    "ppocr_cls_like": Spec("x", (48, 192), (64, 256), (0.5,), (0.5,), (0, 2, 3), True),
}
FAST = CalibrationSettings(max_positions=64)


def _arch(path: Path) -> str:
    return path.name.split(".")[0]


def _images(arch: str) -> list[Path]:
    return sorted((LOOK / f"{arch}_calib").glob("*.jpg"))


def _preprocess(arch: str, files: list[Path], size: tuple[int, int]) -> np.ndarray:
    """What onnxprune's image reader gives: RGB, bilinear resize to (H, W), /255, (x - mean) / std, NCHW."""
    spec = SPECS[arch]
    out = []
    for f in files:
        with Image.open(f) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), getattr(Image, "Resampling", Image).BILINEAR)
            x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        if spec.mean is not None:
            x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        out.append(x.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def _feed(arch: str, size: tuple[int, int], n: int = 3) -> dict[str, np.ndarray]:
    """The last n calibration images at ``size`` (the held-out end of the folder)."""
    return {SPECS[arch].input: _preprocess(arch, _images(arch)[-n:], size)}


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _signature(model: onnx.ModelProto):
    return ([(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in real_inputs(model)],
            [(o.name, o.type.tensor_type.elem_type, _dims(o)) for o in model.graph.output],
            sorted((o.domain, o.version) for o in model.opset_import))


def _shape_arg(arch: str) -> str:
    h, w = SPECS[arch].calib
    return f"{SPECS[arch].input}:1x3x{h}x{w}"


def _macs(model: onnx.ModelProto, arch: str) -> int:
    """Multiply-adds at batch 1 and the calibration resolution."""
    spec = SPECS[arch]
    shape = (1, 3, *spec.calib)
    try:
        return count_model(model, {spec.input: shape}).flops
    except TypeError:  # a count_model without input_shapes: fix the dims on a copy
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
        inp = next(i for i in fixed.graph.input if i.name == spec.input)
        for d, v in zip(inp.type.tensor_type.shape.dim, shape):
            d.Clear()
            d.dim_value = v
        return count_model(fixed).flops


def _image_options(arch: str) -> ImageOptions:
    spec = SPECS[arch]
    return ImageOptions(size=spec.calib, mean=spec.mean, std=spec.std)


@pytest.fixture(scope="session")
def calib_npz(tmp_path_factory):
    """<name>.npz of the calibration images: the committed one, or written from the images (detectors)."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if SPECS[arch].npz:
            return LOOK / f"{arch}.npz"
        if arch not in made:
            path = tmp_path_factory.mktemp("lookalike_npz") / f"{arch}.npz"
            np.savez(path, **{SPECS[arch].input: _preprocess(arch, _images(arch), SPECS[arch].calib)})
            made[arch] = path
        return made[arch]

    return get


# --------------------------------------------------------------------------- the committed files
def test_lookalikes_are_complete_and_small():
    assert {_arch(p) for p in MODELS} == set(SPECS)
    for arch, spec in SPECS.items():
        for exporter in ("ts", "dynamo"):
            path = LOOK / f"{arch}.{exporter}.onnx"
            assert path.is_file() and path.stat().st_size < 300 << 10, path
        images = _images(arch)
        assert 8 <= len(images) <= 16
        assert sum(p.stat().st_size for p in images) < 1 << 20
        for p in images:
            with Image.open(p) as img:
                assert img.size == (spec.calib[1], spec.calib[0]), p
        if spec.npz:
            with np.load(LOOK / f"{arch}.npz") as data:
                assert data[spec.input].shape == (len(images), 3, *spec.calib)
            assert (LOOK / f"{arch}.npz").stat().st_size < 1 << 20


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_exports_are_dynamic_and_run_at_several_resolutions(path: Path):
    arch, spec = _arch(path), SPECS[_arch(path)]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = real_inputs(model)
    assert inp.name == spec.input
    dims = _dims(inp)
    assert [i for i, d in enumerate(dims) if isinstance(d, str)] == list(spec.dynamic), dims
    for size in (spec.calib, spec.other):
        outs = run_model(path, _feed(arch, size, 2))
        assert all(np.isfinite(o).all() for o in outs)


# --------------------------------------------------------------------------- onnxprune on them
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_analyze(path: Path):
    result = run_cli(["analyze", path, "--shape", _shape_arg(_arch(path))])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_keep_all_reproduces_outputs(path: Path, calib_npz):
    arch, spec = _arch(path), SPECS[_arch(path)]
    options = CompressOptions(target=Target("flops", 1.0), num_samples=4, holdout=0.0,
                              calibration=CalibrationSettings(max_positions=32))
    result = compress(path, calib_npz(arch), options)
    assert _signature(result.model) == _signature(load_model(path))
    for size in (spec.calib, spec.other):
        feed = _feed(arch, size)
        for a, b in zip(run_model(path, feed), run_model(result.model, feed)):
            assert a.shape == b.shape
            assert relative_error(a, b) < 1e-5, (size, relative_error(a, b))
            assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-6), size


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_half_flops_gives_valid_smaller_model(path: Path):
    arch, spec = _arch(path), SPECS[_arch(path)]
    options = CompressOptions(target=Target("flops", 0.5), num_samples=8, holdout=0.25, calibration=FAST,
                              image=_image_options(arch))
    result = compress(path, LOOK / f"{arch}_calib", options)   # the image folder, as users give it
    pruned, original = result.model, load_model(path)
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(pruned) == _signature(original)
    (inp,) = real_inputs(pruned)
    assert all(isinstance(_dims(inp)[i], str) for i in spec.dynamic), _dims(inp)   # H/W still symbolic
    assert len(pruned.SerializeToString()) < len(original.SerializeToString())
    assert count_params(pruned) < count_params(original)
    for size in (spec.calib, spec.other):
        feed = _feed(arch, size)
        outs, want = run_model(pruned, feed), run_model(original, feed)
        assert [o.shape for o in outs] == [o.shape for o in want], size
        assert all(np.isfinite(o).all() for o in outs), size
    kept = _macs(pruned, arch) / _macs(original, arch)
    assert 0.45 <= kept <= 0.52, kept


def _paddle_style(path: Path, folder: Path) -> Path:
    """The export as paddle2onnx writes it: weights as Constant nodes, dims named p2o.DynamicDimension.K."""
    model = load_model(path)
    graph = model.graph
    constants = [onnx.helper.make_node("Constant", [], [t.name], name=f"p2o.Constant.{k}", value=t)
                 for k, t in enumerate(graph.initializer)]
    nodes = constants + list(graph.node)
    del graph.initializer[:], graph.node[:]
    graph.node.extend(nodes)
    for vi in [*graph.input, *graph.output]:
        for k, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.dim_param:
                dim.dim_param = f"p2o.DynamicDimension.{k}"
    out = folder / f"{path.stem}.p2o.onnx"
    onnx.save(model, out)
    return out


@pytest.mark.parametrize("name", ["ppocr_det_like.ts.onnx", "ppocr_cls_like.ts.onnx"])
def test_paddle2onnx_style_constants_and_dims(tmp_path, name):
    path = _paddle_style(LOOK / name, tmp_path)
    arch, spec = _arch(LOOK / name), SPECS[_arch(LOOK / name)]
    options = CompressOptions(target=Target("flops", 0.5), num_samples=8, holdout=0.25, calibration=FAST,
                              image=_image_options(arch))
    result = compress(path, LOOK / f"{arch}_calib", options)
    original = load_model(path)
    onnx.checker.check_model(result.model, full_check=True)
    assert _signature(result.model) == _signature(original)
    assert any(d.startswith("p2o.DynamicDimension") for d in _dims(real_inputs(result.model)[0]) if isinstance(d, str))
    assert 0.45 <= _macs(result.model, arch) / _macs(load_model(LOOK / name), arch) <= 0.52
    outs = run_model(result.model, _feed(arch, spec.other))
    assert all(np.isfinite(o).all() for o in outs)


def test_minus_one_batch_and_one_name_for_height_and_width(tmp_path):
    """The orientation classifier as paddle2onnx exported it: input [-1, 3, '?', '?'], so a -1 batch and one
    symbolic name for two sizes (48 x 192 here); both are resolved per position from the data."""
    model = load_model(LOOK / "ppocr_cls_like.ts.onnx")
    dims = real_inputs(model)[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = -1
    for dim in dims[2:]:
        dim.Clear()
        dim.dim_param = "?"
    path = tmp_path / "cls_minus_one.onnx"
    onnx.save(model, path)
    arch, spec = "ppocr_cls_like", SPECS["ppocr_cls_like"]
    assert spec.calib[0] != spec.calib[1]
    options = CompressOptions(target=Target("flops", 0.5), num_samples=8, holdout=0.25, calibration=FAST,
                              image=_image_options(arch))
    result = compress(path, LOOK / f"{arch}_calib", options)
    onnx.checker.check_model(result.model, full_check=True)
    assert _signature(result.model) == _signature(model)
    assert result.report.fidelity.kind == "classes"
    assert result.report.input_shapes == {real_inputs(model)[0].name: (1, 3, *spec.calib)}
    assert 0.45 <= _macs(result.model, arch) / _macs(load_model(LOOK / "ppocr_cls_like.ts.onnx"), arch) <= 0.52
    outs = run_model(result.model, _feed(arch, spec.other))
    assert all(np.isfinite(o).all() for o in outs)
