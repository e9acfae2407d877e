"""Seeded augmentation of calibration images (``--augment``): what a copy is, which samples get copies, and that
every way of reading them sees the same bytes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, run_cli
from onnxprune.calibration.augment import Augmentation, augmented, parse_ops, resize_bilinear, transform
from onnxprune.calibration.sources import InputSpec, open_data
from onnxprune.errors import UsageError

LENET, DIGITS = SAMPLES / "lenet5_digits.onnx", SAMPLES / "digits_calib.npz"


def _images(tmp_path, layout: str, n: int = 10):
    shape = (n, 3, 12, 16) if layout == "nchw" else (n, 12, 16, 3)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x, label=np.arange(n))
    dims = ("N", 3, 12, 16) if layout == "nchw" else ("N", 12, 16, 3)
    return x, open_data(tmp_path / "x.npz", [InputSpec("x", np.float32, dims)])


def test_resize_matches_pil_when_enlarging():
    x = np.random.default_rng(1).random((1, 5, 7)).astype(np.float32)
    ours = resize_bilinear(x, 11, 13)[0]
    pil = np.asarray(Image.fromarray(x[0], mode="F").resize((13, 11), Image.BILINEAR))
    np.testing.assert_allclose(ours, pil, atol=1e-5)
    assert resize_bilinear(x, 5, 7) is x


def test_copy_keeps_shape_dtype_and_is_seeded():
    x = np.random.default_rng(2).random((3, 20, 30)).astype(np.float16)
    a = transform(x, ("crop", "scale", "flip"), np.random.default_rng(7))
    b = transform(x, ("crop", "scale", "flip"), np.random.default_rng(7))
    assert a.shape == x.shape and a.dtype == x.dtype and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)


def test_flip_only_copies_are_the_image_or_its_mirror():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    seen = set()
    for seed in range(20):
        y = transform(x, ("flip",), np.random.default_rng(seed))
        assert np.array_equal(y, x) or np.array_equal(y, x[:, :, ::-1])
        seen.add(np.array_equal(y, x))
    assert seen == {True, False}


def test_mirror_copies_are_always_the_mirror_and_take_no_draw():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        np.testing.assert_array_equal(transform(x, ("mirror",), rng), x[:, :, ::-1])
        assert rng.random() == np.random.default_rng(seed).random()
    cropped = transform(x, ("crop", "mirror"), np.random.default_rng(1))
    assert np.array_equal(cropped, transform(x, ("crop",), np.random.default_rng(1))[:, :, ::-1])


def test_scale_fills_the_border_with_its_mean():
    x = np.full((1, 40, 40), 5.0, dtype=np.float32)
    x[:, 10:30, 10:30] = 9.0
    y = transform(x, ("scale",), np.random.default_rng(3))
    assert y.min() == pytest.approx(5.0) and y.max() == pytest.approx(9.0)
    assert (y == 9.0).sum() < (x == 9.0).sum()   # the image shrank


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_copies_of_calibration_samples_only(tmp_path, layout):
    x, data = _images(tmp_path, layout)
    calib, held = data.split(0.3, seed=0)
    out, idx = augmented(data, calib, Augmentation(2, ("flip",)), seed=4)
    assert len(out) == len(data) + 2 * len(calib)
    np.testing.assert_array_equal(idx[:len(calib)], calib)
    np.testing.assert_array_equal(idx[len(calib):], np.arange(len(data), len(out)))
    copies = out.load(idx[len(calib):])["x"]
    axis = 3 if layout == "nchw" else 2   # the width axis of a batch
    for k, copy in enumerate(copies):
        source = x[calib[k % len(calib)]]
        assert np.array_equal(copy, source) or np.array_equal(copy, np.flip(source, axis - 1))
    assert set(out.labels[idx[len(calib):]]) == set(calib)   # a copy keeps its source's label
    np.testing.assert_array_equal(out.load(held)["x"], x[held])   # held-out samples as they are


def test_a_copy_is_the_same_in_any_batch(tmp_path):
    _, data = _images(tmp_path, "nchw")
    calib, _ = data.split(0.2, seed=0)
    out, idx = augmented(data, calib, Augmentation(3, ("flip", "crop", "scale")), seed=1)
    whole = np.concatenate([feed["x"] for _, feed in out.batches(idx, 7)])
    single = np.concatenate([out.load([i])["x"] for i in idx[::-1]])[::-1]
    np.testing.assert_array_equal(whole, single)
    other, _ = augmented(data, calib, Augmentation(3, ("flip", "crop", "scale")), seed=2)
    assert not np.array_equal(other.load(idx[-3:])["x"], out.load(idx[-3:])["x"])


def test_no_copies_leaves_data_alone(tmp_path):
    _, data = _images(tmp_path, "nchw")
    calib, _ = data.split(0.2)
    assert augmented(data, calib, Augmentation(0)) == (data, calib)


def test_bad_requests_are_usage_errors(tmp_path):
    np.savez(tmp_path / "v.npz", v=np.zeros((4, 8), np.float32))
    vectors = open_data(tmp_path / "v.npz", [InputSpec("v", np.float32, ("N", 8))])
    with pytest.raises(UsageError, match="no 4-D float input"):
        augmented(vectors, np.arange(4), Augmentation(1))
    with pytest.raises(UsageError, match="--augment-ops"):
        Augmentation(1, parse_ops("flip,rotate"))
    assert parse_ops(" Flip, crop,flip ") == ("flip", "crop")


def test_compress_with_copies(tmp_path):
    report = tmp_path / "r.json"
    args = [LENET, "--data", DIGITS, "--num-samples", "60", "--target-params", "0.5", "--report", report,
            "--augment", "2", "--augment-ops", "flip,scale", "-q"]
    first = run_cli(["compress", *args, "-o", tmp_path / "a.onnx"])
    assert first.exit_code == 0, first.output
    facts = json.loads(report.read_text())
    assert facts["calibration_samples"] == 3 * 54   # 54 calibration samples (10 % held out) and two copies each
    assert any("2 augmented copies" in note for note in facts["notes"])
    again = run_cli(["compress", *args, "-o", tmp_path / "b.onnx"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_cli_refuses_unknown_ops(tmp_path):
    result = run_cli(["compress", LENET, "--data", DIGITS, "--augment", "1", "--augment-ops", "rotate",
                      "-o", tmp_path / "x.onnx"])
    assert result.exit_code == 4   # a bad option (README "Exit codes")
    assert "--augment-ops" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()
