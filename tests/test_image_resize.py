"""--resize stretch|letterbox|keep-ratio, --pad-value and --size-multiple: geometry, padding, errors, CLI runs."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxprune.calibration.fingerprint import data_fingerprint
from onnxprune.calibration.images import keep_ratio_width, letterbox_geometry
from onnxprune.calibration.sources import ImageOptions, InputSpec, open_data
from onnxprune.errors import UsageError

from conftest import run_cli

DYNAMIC = InputSpec("x", np.float32, ("N", 3, "H", "W"))
GREY = (90, 160, 220)  # image colour, distinct from every pad value used


def save_image(path, h, w, rgb=GREY):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()).save(path)
    return path


def load_one(folder, spec=DYNAMIC, **options):
    """The first sample as (H, W, C) float32."""
    return open_data(folder, [spec], image_options=ImageOptions(**options)).load([0])["x"][0].transpose(1, 2, 0)


def reference_letterbox(h, w, height, width):
    """ultralytics LetterBox (center, no auto, scaleup) as described: (new_w, new_h, top, bottom, left, right)."""
    r = min(height / h, width / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    return new_w, new_h, int(round(dh - 0.1)), int(round(dh + 0.1)), int(round(dw - 0.1)), int(round(dw + 0.1))


# --------------------------------------------------------------------------------------------- letterbox


def test_letterbox_100x50_into_64x64_rows_and_pad(tmp_path):
    save_image(tmp_path / "a.png", 50, 100)  # 100 wide, 50 high
    x = load_one(tmp_path, size=(64, 64), resize="letterbox", raw_pixels=True)
    assert x.shape == (64, 64, 3)
    # r = 0.64: 64 x 32, dh = 16: rows 0..15 and 48..63 are padding, all columns are image
    np.testing.assert_array_equal(x[:16], 114.0)
    np.testing.assert_array_equal(x[48:], 114.0)
    np.testing.assert_array_equal(x[16:48], np.broadcast_to(np.float32(GREY), (32, 64, 3)))
    assert x[15, 0, 0] == 114 and x[16, 0, 0] == GREY[0] and x[47, 63, 2] == GREY[2] and x[48, 63, 2] == 114


def test_letterbox_odd_padding_and_columns(tmp_path):
    save_image(tmp_path / "wide" / "a.png", 45, 100)  # new 64 x 29, dh = 17.5: top 17, bottom 18
    x = load_one(tmp_path / "wide", size=(64, 64), resize="letterbox", raw_pixels=True)
    rows = np.nonzero(x[:, 0, 0] != 114)[0]
    assert (rows[0], rows[-1]) == (17, 45) and len(rows) == 29
    save_image(tmp_path / "tall" / "a.png", 100, 45)  # columns: left 17, right 18
    x = load_one(tmp_path / "tall", size=(64, 64), resize="letterbox", raw_pixels=True)
    cols = np.nonzero(x[0, :, 0] != 114)[0]
    assert (cols[0], cols[-1]) == (17, 45)
    np.testing.assert_array_equal(x[:, :17], 114.0)
    np.testing.assert_array_equal(x[:, 46:], 114.0)


@pytest.mark.parametrize("seed", range(5))
def test_letterbox_geometry_matches_ultralytics_rounding(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        h, w, height, width = (int(v) for v in rng.integers(1, 700, 4))
        new_w, new_h, top, bottom, left, right = reference_letterbox(h, w, height, width)
        if min(new_w, new_h) < 1:
            continue
        assert letterbox_geometry(h, w, height, width) == (new_w, new_h, top, left)
        assert top + new_h + bottom == height and left + new_w + right == width


def test_letterbox_pad_value_goes_through_scaling_and_normalisation(tmp_path):
    save_image(tmp_path / "a.png", 50, 100)
    x = load_one(tmp_path, size=(64, 64), resize="letterbox", mean=(0.5,), std=(0.25,))
    assert x[0, 0, 0] == pytest.approx((114 / 255 - 0.5) / 0.25, abs=1e-6)
    assert x[32, 0, 0] == pytest.approx((GREY[0] / 255 - 0.5) / 0.25, abs=1e-6)
    x = load_one(tmp_path, size=(64, 64), resize="letterbox", pad_value=127.5, mean=(0.5,), std=(0.5,))
    assert abs(x[0, 0]).max() < 1e-6  # 127.5 normalises to 0
    x = load_one(tmp_path, size=(64, 64), resize="letterbox", pad_value=0, raw_pixels=True)
    assert x[0, 0].tolist() == [0, 0, 0]


def test_letterbox_size_multiple_rounds_canvas_up(tmp_path):
    save_image(tmp_path / "a.png", 50, 100)
    x = load_one(tmp_path, size=(50, 70), resize="letterbox", size_multiple=32, raw_pixels=True)
    assert x.shape[:2] == (64, 96)  # as ultralytics rounds imgsz up to the stride
    # fitted into 64 x 96: r = 0.96, 96 x 48, dh = 8
    assert x[7, 0, 0] == 114 and x[8, 0, 0] == GREY[0] and x[55, 0, 0] == GREY[0] and x[56, 0, 0] == 114


def test_letterbox_uses_static_model_size(tmp_path):
    save_image(tmp_path / "a.png", 50, 100)
    spec = InputSpec("x", np.float32, ("N", 3, 64, 64))
    x = load_one(tmp_path, spec, resize="letterbox", raw_pixels=True)
    assert x.shape == (64, 64, 3) and x[0, 0, 0] == 114


# --------------------------------------------------------------------------------------------- keep-ratio


def test_keep_ratio_width_rule():
    assert keep_ratio_width(50, 100, 48) == 96
    assert keep_ratio_width(30, 31, 48) == 50  # ceil(49.6)
    assert keep_ratio_width(30, 31, 48, multiple=4) == 52
    assert keep_ratio_width(50, 100, 48, multiple=5) == 100
    assert keep_ratio_width(50, 100, 48, multiple=5, max_width=80) == 80  # the cap wins
    assert keep_ratio_width(48, 1000, 48, multiple=4, max_width=320) == 320
    assert keep_ratio_width(1000, 1, 48) == 1  # never 0
    for h, w, height in [(32, 100, 48), (17, 93, 32), (64, 7, 48)]:
        assert keep_ratio_width(h, w, height) == math.ceil(height * (w / h))


def test_keep_ratio_resizes_and_right_pads(tmp_path):
    save_image(tmp_path / "a.png", 20, 30)  # 8 high: ceil(12) = 12, a multiple of 4
    x = load_one(tmp_path, size=(8, 20), resize="keep-ratio", size_multiple=4, raw_pixels=True, pad_value=7)
    assert x.shape == (8, 20, 3)
    np.testing.assert_array_equal(x[:, :12], np.broadcast_to(np.float32(GREY), (8, 12, 3)))
    np.testing.assert_array_equal(x[:, 12:], 7.0)
    save_image(tmp_path / "b" / "a.png", 20, 31)  # ceil(12.4) = 13 -> 16 with --size-multiple 8
    x = load_one(tmp_path / "b", size=(8, 20), resize="keep-ratio", size_multiple=8, raw_pixels=True, pad_value=7)
    assert x[0, 15, 0] == GREY[0] and x[0, 16, 0] == 7
    save_image(tmp_path / "c" / "a.png", 10, 100)  # ceil(80) capped at 20: no padding
    x = load_one(tmp_path / "c", size=(8, 20), resize="keep-ratio", raw_pixels=True, pad_value=7)
    assert (x != 7).all()


def test_keep_ratio_default_pad_is_zero_after_normalisation(tmp_path):
    save_image(tmp_path / "a.png", 20, 20)
    # PP-OCR: (x/255 - 0.5)/0.5, padded with 0 after normalisation
    x = load_one(tmp_path, size=(8, 32), resize="keep-ratio", mean=(0.5,), std=(0.5,))
    np.testing.assert_array_equal(x[:, 8:], 0.0)
    assert x[0, 0, 0] == pytest.approx((GREY[0] / 255 - 0.5) / 0.5, abs=1e-6)
    x = load_one(tmp_path, size=(8, 32), resize="keep-ratio", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert abs(x[:, 8:]).max() < 1e-6
    x = load_one(tmp_path, size=(8, 32), resize="keep-ratio")
    np.testing.assert_array_equal(x[:, 8:], 0.0)
    x = load_one(tmp_path, size=(8, 32), resize="keep-ratio", pad_value=127.5, mean=(0.5,), std=(0.5,))
    np.testing.assert_array_equal(x[:, 8:], 0.0)


def test_keep_ratio_dynamic_width_pads_to_widest_and_is_batch_independent(tmp_path):
    for i, (h, w) in enumerate([(16, 16), (16, 40), (32, 20), (8, 30)]):
        save_image(tmp_path / f"{i}.png", h, w)
    spec = InputSpec("x", np.float32, ("N", 3, 16, "W"))  # static height, free width, no --image-size
    opts = ImageOptions(resize="keep-ratio", size_multiple=4, raw_pixels=True)
    data = open_data(tmp_path, [spec], image_options=opts)
    assert data.size == (16, 60)  # widths 16, 40, 12, ceil(60) -> widest 60
    x = data.load(range(4))["x"]
    assert x.shape == (4, 3, 16, 60)
    visible = [(x[i, 0, 0] != 0).sum() for i in range(4)]
    assert visible == [16, 40, 12, 60]
    fingerprints = {data_fingerprint(data, range(4), b) for b in (1, 3, 4)}
    assert len(fingerprints) == 1  # one shape for every sample: batching does not change the data


def test_resize_options_change_the_data_fingerprint(tmp_path):
    save_image(tmp_path / "a.png", 20, 30)
    save_image(tmp_path / "b.png", 30, 20)

    def fingerprint(**options):
        data = open_data(tmp_path, [DYNAMIC], image_options=ImageOptions(size=(16, 16), **options))
        return data_fingerprint(data, range(2), 2)

    prints = [fingerprint(), fingerprint(resize="letterbox"), fingerprint(resize="letterbox", pad_value=0),
              fingerprint(resize="keep-ratio"), fingerprint(resize="keep-ratio", size_multiple=4)]
    assert len(set(prints)) == len(prints)
    assert fingerprint(resize="letterbox") == fingerprint(resize="letterbox", pad_value=114)


def test_library_option_errors(tmp_path):
    save_image(tmp_path / "a.png", 20, 30)
    cases = [
        (ImageOptions(resize="fit"), "--resize"),
        (ImageOptions(size=(16, 16), resize="letterbox", pad_value=256), "--pad-value"),
        (ImageOptions(size=(16, 16), resize="letterbox", pad_value=-1), "--pad-value"),
        (ImageOptions(size=(16, 16), resize="letterbox", pad_value=math.nan), "--pad-value"),
        (ImageOptions(size=(16, 16), resize="keep-ratio", size_multiple=0), "--size-multiple"),
        (ImageOptions(size=(16, 16), pad_value=3), "--pad-value"),
        (ImageOptions(size=(16, 16), size_multiple=4), "--size-multiple"),
        (ImageOptions(resize="letterbox"), "--image-size"),
        (ImageOptions(resize="keep-ratio"), "--image-size"),
    ]
    for opts, fragment in cases:
        with pytest.raises(UsageError) as info:
            open_data(tmp_path, [DYNAMIC], image_options=opts)
        assert fragment in info.value.message and "\n" not in info.value.one_line()
    static = InputSpec("x", np.float32, ("N", 3, 100, 100))
    with pytest.raises(UsageError, match="--size-multiple 32"):
        open_data(tmp_path, [static], image_options=ImageOptions(resize="letterbox", size_multiple=32))
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(UsageError, match="--resize, --pad-value"):
        open_data(tmp_path / "d.npz", [DYNAMIC], image_options=ImageOptions(resize="letterbox", pad_value=0))


# --------------------------------------------------------------------------------------------- CLI


def _cnn(path, spatial=("H", "W")):
    """Conv(3->8) -> Relu -> Conv(8->8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(10), symbolic H/W."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("fc", (10, 8)))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A dynamic-H/W model, a static-height/dynamic-width one, and a folder of images of many sizes."""
    root = tmp_path_factory.mktemp("resize")
    rng = np.random.default_rng(0)
    folder = root / "imgs"
    folder.mkdir()
    for i, (h, w) in enumerate([(12, 12), (20, 24), (16, 40), (30, 18), (9, 27), (24, 24), (14, 50), (40, 16)] * 2):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return _cnn(root / "dyn.onnx"), _cnn(root / "tall16.onnx", (16, "W")), folder, root


def _ok(result):
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args", [
    ["--image-size", "16,16"],
    ["--image-size", "16,20", "--resize", "letterbox", "--size-multiple", "8"],
    ["--image-size", "16,40", "--resize", "keep-ratio", "--size-multiple", "4", "--mean", "0.5", "--std", "0.5"],
])
def test_compress_mixed_sizes_dynamic_model(mixed, args, tmp_path):
    dyn, _, folder, _ = mixed
    _ok(run_cli(["compress", dyn, "--data", folder, "--target-flops", "0.6", "-o", tmp_path / "out.onnx", "-q",
                 "--batch-size", "4", *args]))
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")), full_check=True)


def test_keep_ratio_free_width_calibrate_and_compress_with_stats(mixed, tmp_path):
    _, tall, folder, _ = mixed
    args = ["--data", folder, "--resize", "keep-ratio", "--size-multiple", "8", "--pad-value", "127.5",
            "--batch-size", "4"]
    _ok(run_cli(["calibrate", tall, *args, "--shard", "1/2", "-o", tmp_path / "s1.npz", "-q"]))
    _ok(run_cli(["calibrate", tall, *args, "--shard", "2/2", "-o", tmp_path / "s2.npz", "-q"]))
    _ok(run_cli(["compress", tall, *args, "--target-flops", "0.6", "-o", tmp_path / "a.onnx", "-q"]))
    _ok(run_cli(["compress", tall, *args, "--target-flops", "0.6", "-o", tmp_path / "b.onnx", "-q",
                 "--stats", tmp_path / "s1.npz", "--stats", tmp_path / "s2.npz"]))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    # statistics of other resize options are refused
    other = run_cli(["compress", tall, *args[:-4], "--batch-size", "4", "--target-flops", "0.6",
                     "-o", tmp_path / "c.onnx", "-q", "--stats", tmp_path / "s1.npz", "--stats", tmp_path / "s2.npz"])
    _one_line_error(other, "other calibration samples", code=3)
    assert not (tmp_path / "c.onnx").exists()


def _one_line_error(result, *fragments, code=4):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["--resize", "letterbox"], ["--resize letterbox needs --image-size"]),
    (["--resize", "keep-ratio"], ["--resize keep-ratio needs --image-size"]),
    (["--image-size", "16", "--resize", "letterbox", "--pad-value", "300"], ["--pad-value", "0..255"]),
    (["--image-size", "16", "--resize", "letterbox", "--pad-value", "-0.5"], ["--pad-value"]),
    (["--image-size", "16", "--resize", "keep-ratio", "--size-multiple", "0"], ["--size-multiple"]),
    (["--image-size", "16", "--pad-value", "0"], ["--pad-value", "--resize letterbox or keep-ratio"]),
    (["--image-size", "16", "--size-multiple", "8"], ["--size-multiple", "--resize letterbox or keep-ratio"]),
])
@pytest.mark.parametrize("command", ["compress", "calibrate", "sweep"])
def test_cli_bad_combinations_one_line(mixed, tmp_path, command, args, fragments):
    dyn, _, folder, _ = mixed
    out = ["-o", tmp_path / "out"] if command != "sweep" else []
    _one_line_error(run_cli([command, dyn, "--data", folder, *out, *args]), *fragments)


def test_cli_resize_on_npz_data(mixed, tmp_path):
    dyn = mixed[0]
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    for args in (["--resize", "letterbox"], ["--resize", "keep-ratio", "--size-multiple", "4"], ["--pad-value", "1"]):
        result = run_cli(["compress", dyn, "--data", tmp_path / "d.npz", "-o", tmp_path / "out.onnx", *args])
        _one_line_error(result, args[0], "apply only to image folders")


def test_help_explains_options():
    text = run_cli(["compress", "--help"]).output
    for fragment in ("--resize [stretch|letterbox|keep-ratio]", "--pad-value V", "0..255", "--size-multiple N",
                     "ultralytics", "PaddleOCR"):
        assert fragment in text
