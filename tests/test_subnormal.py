"""Subnormal float32 weights set to zero in the pruned model (onnxprune/graph/subnormal.py)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxprune.graph.subnormal import TINY, count_subnormals, flush_subnormals

from conftest import SAMPLES, run_cli

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"


def _with_subnormals(path) -> onnx.ModelProto:
    """The sample LeNet with one weight of every output channel of its first conv made subnormal (of both signs):
    pruning slices that layer, and the channels it keeps keep theirs."""
    model = onnx.load(str(LENET))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    values = numpy_helper.to_array(init).copy()
    values[:, 0, 0, 0] = np.where(np.arange(values.shape[0]) % 2, 1, -1) * np.float32(TINY / 8)
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(path))
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_flush_sets_exactly_the_subnormal_weights_to_zero_in_a_copy(tmp_path):
    model = _with_subnormals(tmp_path / "m.onnx")
    n = count_subnormals(model)
    assert n == 6   # LeNet's first conv writes 6 channels
    flushed, count = flush_subnormals(model)
    assert count == n and count_subnormals(flushed) == 0 and count_subnormals(model) == n   # the input is kept
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for init in flushed.graph.initializer:
        after, was = numpy_helper.to_array(init), before[init.name]
        changed = after != was
        assert np.all(after[changed] == 0) and np.all(np.abs(was[changed]) < TINY)
    x = np.load(DIGITS)["input"][:16]
    np.testing.assert_allclose(_run(flushed, x), _run(model, x), rtol=0, atol=1e-30)   # the same outputs
    same, none = flush_subnormals(flushed)
    assert same is flushed and none == 0   # nothing to flush: the model itself, no copy


def test_compress_flushes_them_and_keep_subnormals_keeps_them(tmp_path):
    _with_subnormals(tmp_path / "m.onnx")
    for extra, expected in (([], 0), (["--keep-subnormals"], None)):
        out, report = tmp_path / f"p{len(extra)}.onnx", tmp_path / f"r{len(extra)}.json"
        result = run_cli(["compress", tmp_path / "m.onnx", "--data", DIGITS, "--target-flops", 0.5, "-o", out,
                          "--report", report, *extra])
        assert result.exit_code == 0, result.output
        pruned, doc = onnx.load(str(out)), json.loads(report.read_text())
        if expected == 0:
            assert count_subnormals(pruned) == 0
            assert doc["subnormals_flushed"] > 0 and "subnormal weight(s) (below 1.2e-38) set to zero" in result.output
        else:
            assert count_subnormals(pruned) > 0 and doc["subnormals_flushed"] == 0
            assert "subnormal" not in result.output
