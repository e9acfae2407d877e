"""The allocation's output-reach calibration (onnxprune/sensitivity.py, --allocate-by outputs)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxprune.analysis import find_groups
from onnxprune.calibration.collect import CalibrationSettings, collect_statistics
from onnxprune.calibration.sources import open_data
from onnxprune.compress import CompressOptions, compress, input_specs
from onnxprune.graph.io import load_model
from onnxprune.graph.normalise import normalise, static_shapes
from onnxprune.plan import SolverSettings, Target, rank_groups, refit_kept
from onnxprune.rewrite.apply import apply_plan
from onnxprune.runtime import create_session
from onnxprune.sensitivity import SPREAD, calibrate_curves, output_error, output_gains

from conftest import SAMPLES

ZOO = SAMPLES / "zoo"


@pytest.fixture(scope="module")
def mobilenet():
    model = normalise(load_model(ZOO / "mobilenet_v2.ts.onnx"))
    data = open_data(ZOO / "mobilenet_v2.npz", input_specs(model))
    analysis = find_groups(model, static_shapes(model, {k: (1, *v.shape[1:]) for k, v in data.load([0]).items()}))
    consumers = [c for g in analysis.groups if g.prunable for c in g.consumers]
    stats = collect_statistics(model, consumers, data, range(len(data)), CalibrationSettings())
    return model, data, analysis, stats, rank_groups(model, analysis, stats, SolverSettings())


def test_each_gain_is_the_measured_output_error_over_the_predicted_one(mobilenet):
    model, data, analysis, stats, ranked = mobilenet
    gains = output_gains(model, analysis, ranked, stats, SolverSettings(), data, range(8))
    assert gains and all(np.isfinite(g) and g > 0 for g in gains.values())
    r = next(r for r in ranked if r.group.id in gains)
    k = int(np.ceil(0.5 * r.group.size))
    kept = np.ones(analysis.n_classes, dtype=bool)
    kept[r.group.classes[r.order[k:]]] = False
    thinned = apply_plan(model, analysis, refit_kept(model, analysis, stats, SolverSettings(), [r], kept))
    feed = data.load(list(range(8)))
    a, b = create_session(model).run(None, feed)[0], create_session(thinned).run(None, feed)[0]
    a, b = a.astype(np.float64), b.astype(np.float64)
    measured = float(np.mean(np.sum((b - a) ** 2, axis=0) / np.sum(a ** 2, axis=0)))  # per class score, averaged
    assert gains[r.group.id] == pytest.approx(measured / r.curve[k], rel=1e-6)


def test_keeping_every_channel_measures_nothing(mobilenet):
    model, data, analysis, stats, ranked = mobilenet
    assert output_gains(model, analysis, ranked, stats, SolverSettings(), data, range(8), level=1.0) == {}


def test_curves_scale_by_their_gain_and_unmeasured_ones_by_the_median(mobilenet):
    ranked = mobilenet[4]
    gains = {ranked[0].group.id: 2.0, ranked[1].group.id: 4.0, ranked[2].group.id: 10.0}
    scaled = calibrate_curves(ranked, gains)
    np.testing.assert_allclose(scaled[0].curve, 2.0 * ranked[0].curve)
    np.testing.assert_allclose(scaled[2].curve, 10.0 * ranked[2].curve)
    np.testing.assert_allclose(scaled[3].curve, 4.0 * ranked[3].curve)
    assert calibrate_curves(ranked, {}) == list(ranked)
    far = calibrate_curves(ranked, {ranked[0].group.id: 1.0, ranked[1].group.id: 4.0, ranked[2].group.id: 1e3})
    np.testing.assert_allclose(far[2].curve, 4.0 * SPREAD * ranked[2].curve)


def test_output_error_weighs_every_output_channel_alike():
    """A detector's box coordinates (hundreds of pixels) do not drown its class scores (0..1)."""
    rng = np.random.default_rng(0)
    boxes, scores = 500.0 * rng.random((2, 4, 50)), rng.random((2, 2, 50))
    y = np.concatenate([boxes, scores], axis=1)
    noisy = y.copy()
    noisy[:, 4] *= 1.1                       # 10 % off on one class score: relative squared error 0.01
    assert output_error([[y]], [[noisy]]) == pytest.approx(0.01 / 6)
    assert output_error([[y], [y]], [[y], [noisy]]) == pytest.approx(0.01 / 2 / 6)
    assert output_error([[y]], [[y]]) == 0.0


def test_compress_allocates_by_outputs_and_says_so(tmp_path):
    options = CompressOptions(target=Target("flops", 0.5), allocate_by="outputs")
    result = compress(ZOO / "mobilenet_v2.ts.onnx", ZOO / "mobilenet_v2.npz", options, output=tmp_path / "out.onnx")
    assert result.report.achieved("flops") <= 0.5 + 1e-3
    assert any("reach to the outputs" in note for note in result.report.notes)
    plain = compress(ZOO / "mobilenet_v2.ts.onnx", ZOO / "mobilenet_v2.npz", CompressOptions(target=Target("flops", 0.5)))
    assert not any("reach to the outputs" in note for note in plain.report.notes)
