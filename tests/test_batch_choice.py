"""The calibration batch when --batch-size is not given: 32 samples, fewer where one call's tensors would be large."""
from __future__ import annotations

import json

import numpy as np
import onnx

from onnxprune.calibration.collect import BATCH_BYTES, DEFAULT_BATCH, CalibrationSettings, choose_batch
from onnxprune.compress import CompressOptions, load_inputs, with_chosen_batch
from onnxprune.graph.normalise import static_shapes

from conftest import SAMPLES, run_cli

YOLO = SAMPLES / "lookalikes" / "yolov8_like.ts.onnx"
LENET, DIGITS = SAMPLES / "lenet5_digits.onnx", SAMPLES / "digits_calib.npz"


def _per_sample_bytes(model: onnx.ModelProto, shapes: dict) -> int:
    weights = {i.name for i in model.graph.initializer}
    names = {t for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
             for t in (n.input[0], n.output[0]) if t not in weights}
    return 4 * sum(int(np.prod(shapes[t])) for t in names)


def test_small_maps_keep_the_default_batch_and_large_ones_fit_the_byte_budget():
    model = onnx.load(str(YOLO))
    name = model.graph.input[0].name
    assert choose_batch(onnx.load(str(LENET)), static_shapes(onnx.load(str(LENET)))) == DEFAULT_BATCH
    chosen = []
    for side in (320, 640, 1280):
        shapes = static_shapes(model, {name: (1, 3, side, side)})
        batch = choose_batch(model, shapes)
        per_sample = _per_sample_bytes(model, shapes)
        assert batch == 1 or batch * per_sample <= BATCH_BYTES
        assert batch == DEFAULT_BATCH or (batch + 1) * per_sample > BATCH_BYTES
        chosen.append(batch)
    assert chosen[0] > chosen[1] > chosen[2] == 1   # 4× the pixels, about a quarter of the samples per call


def test_a_given_batch_size_is_kept():
    options = CompressOptions(calibration=CalibrationSettings(batch_size=3))
    loaded = load_inputs(LENET, DIGITS, options)
    assert with_chosen_batch(options, loaded).calibration.batch_size == 3
    assert with_chosen_batch(CompressOptions(), loaded).calibration.batch_size == DEFAULT_BATCH


def test_calibrate_records_the_chosen_batch_and_compress_stats_accepts_it(tmp_path):
    look = SAMPLES / "lookalikes"
    data = ["--data", look / "yolov8_like_calib", "--image-size", "640", "--num-samples", "8", "--max-positions",
            "16"]
    stats = tmp_path / "stats.npz"
    result = run_cli(["calibrate", YOLO, *data, "-o", stats])
    assert result.exit_code == 0, result.output
    header = json.loads(str(np.load(stats)["header"]))
    assert header["batch"] == 7   # 640×640: 7 samples a call (29 at 320×320)
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = run_cli(["compress", YOLO, *data, "--stats", stats, "--target-flops", "0.7", "-o", out, "-q",
                      "--report", report])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["calibration_batch"] == 7
