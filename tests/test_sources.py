"""Calibration data loading: formats, image preprocessing, sample order, splits and validation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxprune.calibration.images import ImageData, infer_layout
from onnxprune.calibration.sources import (
    CalibrationData,
    ImageOptions,
    InputSpec,
    open_data,
    parse_floats,
    parse_image_size,
)
from onnxprune.errors import DataError, UsageError

X = InputSpec("x", np.float32, ("N", 3, 4, 4))


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def expect_error(exc_type, fn, *fragments):
    """Run ``fn``; assert it raises ``exc_type`` with a one-line message containing every fragment."""
    with pytest.raises(exc_type) as info:
        fn()
    message = info.value.message
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return info.value


def save_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def solid(h, w, rgb):
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (h, w, 3)).copy()


# --------------------------------------------------------------------------------------------
# .npz


def test_npz_file_loads_values_labels_dtype(tmp_path):
    data = rand(5, 3, 4, 4, dtype=np.float64)
    np.savez(tmp_path / "cal.npz", x=data, label=np.array([3, 1, 4, 1, 5]))
    cal = open_data(tmp_path / "cal.npz", [X])
    assert isinstance(cal, CalibrationData)
    assert (cal.kind, len(cal)) == ("npz", 5)
    assert cal.labels.dtype == np.int64 and cal.labels.tolist() == [3, 1, 4, 1, 5]
    feed = cal.load([4, 0, 2])
    assert feed["x"].dtype == np.float32 and feed["x"].flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(feed["x"], data[[4, 0, 2]].astype(np.float32))


def test_npz_folder_sorted_order_spans_files_and_labels(tmp_path):
    # Sorted by path components: a.npz, b.npz, sub/c.npz.
    np.savez(tmp_path / "b.npz", x=np.full((3, 3, 4, 4), 2.0, np.float32), labels=[20, 21, 22])
    np.savez(tmp_path / "a.npz", x=np.full((2, 3, 4, 4), 1.0, np.float32), labels=[10, 11])
    (tmp_path / "sub").mkdir()
    np.savez_compressed(tmp_path / "sub" / "c.npz", x=np.full((1, 3, 4, 4), 3.0, np.float32), labels=[30])
    cal = open_data(tmp_path, [X])
    assert len(cal) == 6
    assert cal.labels.tolist() == [10, 11, 20, 21, 22, 30]
    firsts = cal.load(range(6))["x"][:, 0, 0, 0]
    assert firsts.tolist() == [1, 1, 2, 2, 2, 3]
    assert cal.load([5, 1])["x"][:, 0, 0, 0].tolist() == [3, 1]


def test_npz_multiple_inputs_and_single_sample_without_batch_dim(tmp_path):
    a = InputSpec("a", np.float32, ("N", 2))
    b = InputSpec("b", np.float16, ("N", 3, 2, 2))
    np.savez(tmp_path / "0.npz", a=np.array([1.0, 2.0], np.float32), b=rand(3, 2, 2))  # one sample
    np.savez(tmp_path / "1.npz", a=np.array([[3.0, 4.0], [5.0, 6.0]]), b=rand(2, 3, 2, 2, seed=1))
    cal = open_data(tmp_path, [a, b])
    assert len(cal) == 3 and cal.labels is None
    feed = cal.load([0, 1, 2])
    assert feed["a"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert feed["b"].shape == (3, 3, 2, 2) and feed["b"].dtype == np.float16
    np.testing.assert_allclose(feed["b"][0], rand(3, 2, 2), rtol=1e-3)


def test_npz_label_name_that_is_an_input_is_an_input(tmp_path):
    spec = InputSpec("label", np.float32, ("N", 2))
    np.savez(tmp_path / "d.npz", label=np.ones((2, 2), np.float32), labels=[0, 1])
    cal = open_data(tmp_path / "d.npz", [spec])
    assert cal.load([1])["label"].tolist() == [[1.0, 1.0]]
    assert cal.labels.tolist() == [0, 1]


def test_npz_integer_input_accepts_integer_data(tmp_path):
    ids = InputSpec("ids", np.int64, ("batch", "seq"))
    np.savez(tmp_path / "t.npz", ids=np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    feed = open_data(tmp_path / "t.npz", [ids]).load([1, 0])
    assert feed["ids"].dtype == np.int64 and feed["ids"].tolist() == [[4, 5, 6], [1, 2, 3]]


def test_npz_dynamic_dims_accept_any_size(tmp_path):
    spec = InputSpec("x", np.float32, (None, 3, "h", "w"))
    np.savez(tmp_path / "a.npz", x=rand(2, 3, 5, 7))
    np.savez(tmp_path / "b.npz", x=rand(1, 3, 5, 7))
    assert open_data(tmp_path, [spec]).load([0, 2])["x"].shape == (2, 3, 5, 7)


def test_npz_open_is_lazy_and_caches_one_file(tmp_path, monkeypatch):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=np.full((2, 3, 4, 4), float(i), np.float32))
    calls = []
    real_load = np.load

    def counting_load(*args, **kwargs):
        calls.append(str(args[0]))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    cal = open_data(tmp_path, [X])
    assert calls == [] and len(cal) == 6  # headers only
    cal.load([0])
    cal.load([1])
    assert len(calls) == 1  # second load served from the one-file cache
    assert cal.load([4, 5])["x"][:, 0, 0, 0].tolist() == [2, 2]
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------
# .npy


def test_npy_folder_samples_and_batches(tmp_path):
    np.save(tmp_path / "b.npy", np.full((2, 3, 4, 4), 2.0, np.float32))  # a batch
    np.save(tmp_path / "a.npy", np.full((3, 4, 4), 1.0, np.float32))  # one sample
    np.save(tmp_path / "c.npy", np.asfortranarray(np.full((1, 3, 4, 4), 3.0)))  # float64, fortran
    cal = open_data(tmp_path, [X])
    assert (cal.kind, len(cal), cal.labels) == ("npy", 4, None)
    feed = cal.load([3, 0, 1, 2])
    assert feed["x"][:, 0, 0, 0].tolist() == [3, 1, 2, 2]
    assert feed["x"].dtype == np.float32 and feed["x"].flags["C_CONTIGUOUS"]


def test_single_npy_file(tmp_path):
    data = rand(4, 3, 4, 4)
    np.save(tmp_path / "one.npy", data)
    cal = open_data(tmp_path / "one.npy", [X])
    assert len(cal) == 4
    np.testing.assert_array_equal(cal.load([2])["x"], data[2:3])


# --------------------------------------------------------------------------------------------
# Images


def test_images_scaled_to_unit_range_nchw_static_size(tmp_path):
    save_image(tmp_path / "img.png", solid(4, 4, (255, 0, 51)))
    cal = open_data(tmp_path, [X])
    assert isinstance(cal, ImageData) and cal.kind == "images" and cal.labels is None
    x = cal.load([0])["x"]
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_images_raw_pixels(tmp_path):
    save_image(tmp_path / "img.png", solid(4, 4, (255, 0, 51)))
    x = open_data(tmp_path, [X], image_options=ImageOptions(raw_pixels=True)).load([0])["x"]
    assert x[0, :, 2, 3].tolist() == [255.0, 0.0, 51.0]


def test_images_mean_std_per_channel_and_broadcast(tmp_path):
    save_image(tmp_path / "img.png", solid(4, 4, (255, 0, 51)))
    opts = ImageOptions(mean=(0.5, 0.25, 0.2), std=(0.5, 0.25, 0.1))
    x = open_data(tmp_path, [X], image_options=opts).load([0])["x"]
    np.testing.assert_allclose(x[0, :, 1, 1], [1.0, -1.0, 0.0], atol=1e-5)
    x1 = open_data(tmp_path, [X], image_options=ImageOptions(mean=(0.5,), std=(0.5,))).load([0])["x"]
    np.testing.assert_allclose(x1[0, :, 1, 1], [1.0, -1.0, -0.6], atol=1e-5)


def test_images_resize_to_image_size_bilinear(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    save_image(tmp_path / "img.png", pixels)
    spec = InputSpec("x", np.float32, ("N", 3, "H", "W"))
    cal = open_data(tmp_path, [spec], image_options=ImageOptions(size=(5, 6)))
    x = cal.load([0])["x"]
    assert x.shape == (1, 3, 5, 6)
    expected = np.asarray(Image.fromarray(pixels).resize((6, 5), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(x[0], expected.transpose(2, 0, 1), atol=1e-6)


def test_images_resized_to_static_model_size(tmp_path):
    save_image(tmp_path / "big.png", solid(16, 12, (10, 20, 30)))
    save_image(tmp_path / "small.png", solid(2, 2, (10, 20, 30)))
    x = open_data(tmp_path, [X], image_options=ImageOptions(raw_pixels=True)).load([0, 1])["x"]
    assert x.shape == (2, 3, 4, 4)
    assert np.allclose(x[:, :, 1, 1], [10, 20, 30])


def test_images_dynamic_model_size_uses_image_size(tmp_path):
    save_image(tmp_path / "a.png", solid(6, 9, (1, 2, 3)))
    save_image(tmp_path / "b.png", solid(6, 9, (4, 5, 6)))
    cal = open_data(tmp_path, [InputSpec("x", np.float32, ("N", 3, "H", "W"))])
    assert cal.load([0, 1])["x"].shape == (2, 3, 6, 9)


def test_images_nhwc_inferred(tmp_path):
    save_image(tmp_path / "img.png", solid(4, 4, (255, 0, 51)))
    spec = InputSpec("x", np.float32, (1, 4, 4, 3))
    assert infer_layout(spec) == "nhwc" and infer_layout(X) == "nchw"
    x = open_data(tmp_path, [spec]).load([0])["x"]
    assert x.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_images_explicit_layout(tmp_path):
    save_image(tmp_path / "img.png", solid(3, 3, (255, 0, 0)))
    spec = InputSpec("x", np.float32, ("N", 3, 3, 3))  # ambiguous: inferred nchw
    x = open_data(tmp_path, [spec], image_options=ImageOptions(layout="nhwc")).load([0])["x"]
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 0.0, 0.0])


def test_images_bgr_after_rgb_mean(tmp_path):
    save_image(tmp_path / "img.png", solid(4, 4, (255, 0, 51)))
    opts = ImageOptions(raw_pixels=True, bgr=True, mean=(255.0, 0.0, 1.0))
    x = open_data(tmp_path, [X], image_options=opts).load([0])["x"]
    assert x[0, :, 0, 0].tolist() == [50.0, 0.0, 0.0]  # B-1, G-0, R-255


def test_images_grayscale_for_one_channel_model(tmp_path):
    rgb = solid(4, 4, (200, 100, 50))
    save_image(tmp_path / "img.png", rgb)
    spec = InputSpec("x", np.float32, ("N", 1, 4, 4))
    x = open_data(tmp_path, [spec], image_options=ImageOptions(raw_pixels=True)).load([0])["x"]
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)
    assert x.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(x[0, 0], expected)


def test_images_class_folder_labels_sorted(tmp_path):
    classes = ["truck", "airplane", "cat", "bird"]
    for name in classes:
        for i in range(2):
            save_image(tmp_path / name / f"{i}.png", solid(4, 4, (i, 0, 0)))
    save_image(tmp_path / "cat" / "nested" / "deep.jpg", solid(4, 4, (0, 0, 0)))
    (tmp_path / "notes.txt").write_text("ignored")
    cal = open_data(tmp_path, [X])
    assert cal.classes == ["airplane", "bird", "cat", "truck"]
    assert cal.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert [p.relative_to(tmp_path).as_posix() for p in cal.files][:2] == ["airplane/0.png", "airplane/1.png"]
    assert cal.files[6].relative_to(tmp_path).as_posix() == "cat/nested/deep.jpg"


def test_images_at_root_have_no_labels(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    save_image(tmp_path / "cls" / "b.bmp", solid(4, 4, (0, 0, 0)))
    cal = open_data(tmp_path, [X])
    assert len(cal) == 2 and cal.labels is None


def test_images_uppercase_extensions_and_hidden_files_skipped(tmp_path):
    save_image(tmp_path / "A.PNG", solid(4, 4, (0, 0, 0)))
    (tmp_path / "._A.PNG").write_bytes(b"resource fork junk")
    Image.fromarray(solid(4, 4, (9, 9, 9))).save(tmp_path / "b.JPEG", format="JPEG")
    cal = open_data(tmp_path, [X])
    assert len(cal) == 2
    assert cal.load([0, 1])["x"].shape == (2, 3, 4, 4)


def test_images_uint8_input_with_raw_pixels(tmp_path):
    save_image(tmp_path / "img.png", solid(4, 4, (255, 0, 51)))
    spec = InputSpec("x", np.uint8, (1, 4, 4, 3))
    x = open_data(tmp_path, [spec], image_options=ImageOptions(raw_pixels=True)).load([0])["x"]
    assert x.dtype == np.uint8 and x[0, 0, 0].tolist() == [255, 0, 51]


# --------------------------------------------------------------------------------------------
# num_samples, split, batches, load


def test_num_samples_npz_takes_first_in_order(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.full((3, 3, 4, 4), 1.0, np.float32), label=[0, 1, 2])
    np.savez(tmp_path / "b.npz", x=np.full((3, 3, 4, 4), 2.0, np.float32), label=[3, 4, 5])
    np.savez(tmp_path / "c.npz", y=np.ones(1))  # never read: beyond the cap
    cal = open_data(tmp_path, [X], num_samples=4)
    assert len(cal) == 4 and cal.labels.tolist() == [0, 1, 2, 3]
    assert cal.load(range(4))["x"][:, 0, 0, 0].tolist() == [1, 1, 1, 2]


def test_num_samples_npy_and_larger_than_available(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full((2, 3, 4, 4), float(i), np.float32))
    assert open_data(tmp_path, [X], num_samples=3).load([2])["x"][0, 0, 0, 0] == 1.0
    assert len(open_data(tmp_path, [X], num_samples=3)) == 3
    assert len(open_data(tmp_path, [X], num_samples=100)) == 6


def test_num_samples_images_keeps_class_indices(tmp_path):
    for name in ["b", "a"]:
        for i in range(3):
            save_image(tmp_path / name / f"{i}.png", solid(4, 4, (0, 0, 0)))
    cal = open_data(tmp_path, [X], num_samples=4)
    assert len(cal) == 4 and set(cal.labels.tolist()) <= {0, 1}
    assert cal.labels.tolist() == sorted(cal.labels.tolist())       # file order is kept


def test_num_samples_images_draws_from_every_class_folder(tmp_path):
    for name in ["a", "b", "c", "d"]:
        for i in range(20):
            save_image(tmp_path / name / f"{i:02d}.png", solid(4, 4, (0, 0, 0)))
    cal = open_data(tmp_path, [X], num_samples=20)
    assert set(cal.labels.tolist()) == {0, 1, 2, 3}                  # not the first 20 files (one class)
    again = open_data(tmp_path, [X], num_samples=20)
    assert cal.labels.tolist() == again.labels.tolist()               # seeded
    other = open_data(tmp_path, [X], num_samples=20, seed=1)
    assert len(other) == 20


def test_split_deterministic_disjoint_sorted(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(50, 3, 4, 4))
    cal = open_data(tmp_path / "d.npz", [X])
    calib, held = cal.split(0.2, seed=7)
    again = cal.split(0.2, seed=7)
    assert np.array_equal(calib, again[0]) and np.array_equal(held, again[1])
    assert len(held) == 10 and len(calib) == 40
    assert set(calib.tolist()).isdisjoint(held.tolist())
    assert sorted(calib.tolist() + held.tolist()) == list(range(50))
    assert np.all(np.diff(calib) > 0) and np.all(np.diff(held) > 0)
    assert calib.dtype == np.int64 and held.dtype == np.int64
    assert not np.array_equal(cal.split(0.2, seed=8)[1], held)


def test_split_edges(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(5, 3, 4, 4))
    cal = open_data(tmp_path / "d.npz", [X])
    calib, held = cal.split(0.0)
    assert calib.tolist() == [0, 1, 2, 3, 4] and held.size == 0
    assert [len(p) for p in cal.split(0.01)] == [4, 1]  # a non-zero share holds out at least one
    assert [len(p) for p in cal.split(0.99)] == [1, 4]  # at least one calibration sample
    np.savez(tmp_path / "one.npz", x=rand(1, 3, 4, 4))
    calib, held = open_data(tmp_path / "one.npz", [X]).split(0.5)
    assert calib.tolist() == [0] and held.size == 0
    for bad in (1.0, -0.1, float("nan")):
        expect_error(UsageError, lambda: cal.split(bad), "--holdout")


def test_batches_order_and_sizes(tmp_path):
    data = rand(10, 3, 4, 4)
    np.savez(tmp_path / "d.npz", x=data)
    cal = open_data(tmp_path / "d.npz", [X])
    order = [9, 3, 4, 0, 1, 2, 8, 7, 6, 5]
    seen = list(cal.batches(order, 4))
    assert [b.tolist() for b, _ in seen] == [order[0:4], order[4:8], order[8:10]]
    for idx, feed in seen:
        np.testing.assert_array_equal(feed["x"], data[idx])
    assert list(cal.batches([], 4)) == []
    expect_error(UsageError, lambda: list(cal.batches(order, 0)), "batch size")


def test_load_index_checks(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(3, 3, 4, 4))
    cal = open_data(tmp_path / "d.npz", [X])
    assert cal.load([])["x"].shape == (0, 3, 4, 4)
    assert cal.load(np.array([2, 2]))["x"].shape == (2, 3, 4, 4)
    with pytest.raises(IndexError):
        cal.load([3])
    with pytest.raises(IndexError):
        cal.load([-1])


# --------------------------------------------------------------------------------------------
# Option parsing


def test_parse_image_size():
    assert parse_image_size("32") == (32, 32)
    assert parse_image_size("32,48") == (32, 48)
    assert parse_image_size(" 224 , 320 ") == (224, 320)
    for bad in ("", "a", "0", "-3", "1,2,3", "32x48", "3.5"):
        expect_error(UsageError, lambda: parse_image_size(bad), "--image-size", repr(bad))


def test_parse_floats():
    assert parse_floats("0.5,0.25,1", "--mean") == (0.5, 0.25, 1.0)
    assert parse_floats("0.5", "--std") == (0.5,)
    for bad in ("", "a,b", "0.5,,0.5", "nan", "inf"):
        expect_error(UsageError, lambda: parse_floats(bad, "--std"), "--std", repr(bad))


# --------------------------------------------------------------------------------------------
# Validation: paths and folders


def test_missing_path(tmp_path):
    expect_error(DataError, lambda: open_data(tmp_path / "nope", [X]), "nope", "does not exist")


def test_empty_folder(tmp_path):
    expect_error(DataError, lambda: open_data(tmp_path, [X]), str(tmp_path), "empty")


def test_folder_without_supported_files(tmp_path):
    (tmp_path / "data.csv").write_text("1,2")
    expect_error(DataError, lambda: open_data(tmp_path, [X]), str(tmp_path), ".csv")


def test_unsupported_single_file(tmp_path):
    (tmp_path / "data.pt").write_bytes(b"x")
    expect_error(DataError, lambda: open_data(tmp_path / "data.pt", [X]), "data.pt")


def test_mixed_kinds(tmp_path):
    np.save(tmp_path / "a.npy", rand(3, 4, 4))
    save_image(tmp_path / "b.png", solid(4, 4, (0, 0, 0)))
    expect_error(DataError, lambda: open_data(tmp_path, [X]), str(tmp_path), ".npy", "image")


def test_image_options_rejected_for_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(1, 3, 4, 4))
    opts = ImageOptions(mean=(0.5,), bgr=True)
    expect_error(UsageError, lambda: open_data(tmp_path / "d.npz", [X], image_options=opts), "--mean", "--bgr")


def test_bad_num_samples(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(1, 3, 4, 4))
    expect_error(UsageError, lambda: open_data(tmp_path / "d.npz", [X], num_samples=0), "--num-samples")


# --------------------------------------------------------------------------------------------
# Validation: arrays


def test_npz_missing_input(tmp_path):
    two = [X, InputSpec("y", np.float32, ("N", 2))]
    np.savez(tmp_path / "d.npz", x=rand(1, 3, 4, 4))
    err = expect_error(DataError, lambda: open_data(tmp_path / "d.npz", two), "d.npz", "'y'", "'x', 'y'")
    assert "np.savez" in err.note


def test_npz_unnamed_array(tmp_path):
    np.savez(tmp_path / "d.npz", rand(1, 3, 4, 4))
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", "'x'", "arr_0")


def test_npz_unknown_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(1, 3, 4, 4), extra=np.ones(1))
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", "'extra'", "expected arrays 'x'")


def test_static_dims_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(2, 3, 5, 4))
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", "(2, 3, 5, 4)", "(N, 3, 4, 4)")
    np.save(tmp_path / "bad.npy", rand(2, 4, 4))
    (tmp_path / "d.npz").unlink()
    expect_error(DataError, lambda: open_data(tmp_path, [X]), "bad.npy", "(2, 4, 4)")


def test_dynamic_dims_inconsistent_across_files(tmp_path):
    spec = InputSpec("x", np.float32, ("N", 3, "h", "w"))
    np.savez(tmp_path / "a.npz", x=rand(1, 3, 5, 5))
    np.savez(tmp_path / "b.npz", x=rand(1, 3, 6, 5))
    expect_error(DataError, lambda: open_data(tmp_path, [spec]), "a.npz", "b.npz", "(3, 6, 5)", "(3, 5, 5)")


def test_sample_counts_differ_between_inputs(tmp_path):
    two = [X, InputSpec("y", np.float32, ("N", 2))]
    np.savez(tmp_path / "d.npz", x=rand(3, 3, 4, 4), y=rand(2, 2))
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", two), "d.npz", "'x': 3", "'y': 2")


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_integer_or_bool_data_for_float_input(tmp_path, dtype):
    np.savez(tmp_path / "d.npz", x=np.ones((1, 3, 4, 4), dtype))
    err = expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", np.dtype(dtype).name, "float32")
    assert "float" in err.note


def test_float_data_for_integer_input(tmp_path):
    np.save(tmp_path / "ids.npy", np.ones((2, 3), np.float32))
    spec = InputSpec("ids", np.int64, ("N", 3))
    expect_error(DataError, lambda: open_data(tmp_path, [spec]), "ids.npy", "int64")


def test_integer_data_out_of_range_for_narrow_input(tmp_path):
    np.savez(tmp_path / "d.npz", ids=np.array([[1, 2**40]], np.int64))
    cal = open_data(tmp_path / "d.npz", [InputSpec("ids", np.int32, ("N", 2))])
    expect_error(DataError, lambda: cal.load([0]), "d.npz", "int32")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_found_at_load(tmp_path, bad):
    np.savez(tmp_path / "a.npz", x=rand(2, 3, 4, 4))
    data = rand(2, 3, 4, 4)
    data[1, 0, 2, 2] = bad
    np.savez(tmp_path / "b.npz", x=data)
    cal = open_data(tmp_path, [X])  # lazy: values are checked when loaded
    cal.load([0, 1, 2])
    expect_error(DataError, lambda: cal.load([0, 3]), "b.npz", "NaN or Inf", "sample 1")


def test_float16_overflow(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((1, 2), 1e6))
    cal = open_data(tmp_path / "d.npz", [InputSpec("x", np.float16, ("N", 2))])
    expect_error(DataError, lambda: cal.load([0]), "d.npz", "float16")


def test_npy_folder_for_multi_input_model(tmp_path):
    np.save(tmp_path / "a.npy", rand(1, 3, 4, 4))
    two = [X, InputSpec("y", np.float32, ("N", 2))]
    err = expect_error(DataError, lambda: open_data(tmp_path, two), str(tmp_path), "single-input", "'y'")
    assert ".npz" in err.note


def test_labels_in_some_files_only(tmp_path):
    np.savez(tmp_path / "a.npz", x=rand(1, 3, 4, 4), label=[1])
    np.savez(tmp_path / "b.npz", x=rand(1, 3, 4, 4))
    expect_error(DataError, lambda: open_data(tmp_path, [X]), "a.npz", "b.npz", "labels")


def test_label_count_and_type(tmp_path):
    np.savez(tmp_path / "d.npz", x=rand(3, 3, 4, 4), labels=[1, 2])
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", "2 labels for 3 samples")
    np.savez(tmp_path / "d.npz", x=rand(2, 3, 4, 4), labels=[0.5, 1.0])
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", "non-integer labels")
    np.savez(tmp_path / "d.npz", x=rand(2, 3, 4, 4), labels=np.eye(2))
    expect_error(DataError, lambda: open_data(tmp_path / "d.npz", [X]), "d.npz", "1-D")


def test_corrupt_npz_and_npy(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    expect_error(DataError, lambda: open_data(tmp_path / "bad.npz", [X]), "bad.npz")
    (tmp_path / "bad.npz").unlink()
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    expect_error(DataError, lambda: open_data(tmp_path, [X]), "bad.npy")


# --------------------------------------------------------------------------------------------
# Validation: images


def test_corrupt_image_named_at_load(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    cal = open_data(tmp_path, [X])  # static size: images are not opened yet
    assert cal.load([0])["x"].shape == (1, 3, 4, 4)
    expect_error(DataError, lambda: cal.load([1]), "b.jpg")


def test_corrupt_image_named_at_open_when_sizes_are_read(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    (tmp_path / "b.png").write_bytes(b"garbage")
    spec = InputSpec("x", np.float32, ("N", 3, "H", "W"))
    expect_error(DataError, lambda: open_data(tmp_path, [spec]), "b.png")


def test_images_of_different_sizes_without_target_size(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    save_image(tmp_path / "b.png", solid(4, 6, (0, 0, 0)))
    spec = InputSpec("x", np.float32, ("N", 3, "H", "W"))
    err = expect_error(DataError, lambda: open_data(tmp_path, [spec]), "a.png", "b.png", "4x4", "4x6")
    assert "--image-size" in err.note
    assert len(open_data(tmp_path, [spec], image_options=ImageOptions(size=(4, 4)))) == 2


def test_images_for_multi_input_model(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    two = [X, InputSpec("y", np.float32, ("N", 2))]
    expect_error(DataError, lambda: open_data(tmp_path, two), str(tmp_path), "single-input")


def test_image_size_conflicts_with_static_size(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    opts = ImageOptions(size=(8, 8))
    expect_error(UsageError, lambda: open_data(tmp_path, [X], image_options=opts), "--image-size", "'x'", "4")


def test_image_option_values(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    gray = InputSpec("x", np.float32, ("N", 1, 4, 4))
    cases = [
        ([X], ImageOptions(mean=(0.1, 0.2)), "--mean"),
        ([gray], ImageOptions(std=(0.1, 0.2, 0.3)), "--std"),
        ([X], ImageOptions(std=(0.5, 0.0, 0.5)), "--std"),
        ([X], ImageOptions(layout="chw"), "--layout"),
        ([InputSpec("x", np.uint8, ("N", 3, 4, 4))], ImageOptions(), "--raw-pixels"),
    ]
    for inputs, opts, fragment in cases:
        expect_error(UsageError, lambda: open_data(tmp_path, inputs, image_options=opts), fragment)


def test_image_input_shape_problems(tmp_path):
    save_image(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    no_layout = InputSpec("x", np.float32, ("N", 4, 4, "C"))
    err = expect_error(DataError, lambda: open_data(tmp_path, [no_layout]), "'x'", "layout")
    assert "--layout" in err.note
    expect_error(DataError, lambda: open_data(tmp_path, [InputSpec("x", np.float32, ("N", 16))]), "'x'", "4-D")
    four = InputSpec("x", np.float32, ("N", 4, 4, 4))
    expect_error(
        DataError, lambda: open_data(tmp_path, [four], image_options=ImageOptions(layout="nchw")), "4 channels"
    )
