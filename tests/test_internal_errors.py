"""Whatever escapes a stage is one line naming the stage, exit 1, no output file; -v adds the traceback."""
from __future__ import annotations

import pytest

from conftest import SAMPLES
from conftest import run_cli as run

LENET = SAMPLES / "lenet5_digits.onnx"
DIGITS = SAMPLES / "digits_calib.npz"


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure\nsecond line")


@pytest.mark.parametrize("target,doing", [
    ("onnxprune.compress.load_model", "loading the model and data"),
    ("onnxprune.compress.find_groups", "analysing the graph"),
    ("onnxprune.calibration.store.collect_blocks", "calibrating"),
    ("onnxprune.compress.rank_groups", "solving"),
    ("onnxprune.compress.sequential_refit", "re-fitting (error-correcting pass)"),
    ("onnxprune.compress.apply_plan", "rewriting the graph"),
    ("onnxprune.compress.measure_fidelity", "verifying the pruned model"),
    ("onnxprune.compress.save_model", "saving the model"),
])
def test_a_failure_in_each_compress_stage_is_one_line(tmp_path, monkeypatch, target, doing):
    monkeypatch.setattr(target, _boom)
    out = tmp_path / "out.onnx"
    result = run(["compress", LENET, "--data", DIGITS, "--holdout", "0.3", "--target-flops", "0.5", "-q", "-o", out])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"onnxprune: error: internal error while {doing}: RuntimeError: injected failure "
                     "Note: rerun with -v for the traceback, and please report it with the model's opsets and exporter"]
    assert list(tmp_path.iterdir()) == []


def test_verbose_prints_the_traceback_first(tmp_path, monkeypatch):
    monkeypatch.setattr("onnxprune.compress.apply_plan", _boom)
    result = run(["compress", LENET, "--data", DIGITS, "--target-flops", "0.5", "-v", "-o", tmp_path / "out.onnx"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr and "_boom" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("onnxprune: error: internal error while rewriting")


@pytest.mark.parametrize("args,target", [
    (["analyze", LENET], "onnxprune.inspect.find_groups"),
    (["calibrate", LENET, "--data", DIGITS, "-q", "-o", "{tmp}/s.npz"], "onnxprune.calibrate.write_statistics"),
    (["bench", LENET, "--runs", "1", "--rounds", "1", "-q"], "onnxprune.bench.measure._prepare"),
])
def test_other_commands_too(tmp_path, monkeypatch, args, target):
    monkeypatch.setattr(target, _boom)
    result = run([str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"onnxprune: error: internal error while running 'onnxprune "
                                                   f"{args[0]}': RuntimeError: injected failure"), result.stderr
    assert not (tmp_path / "s.npz").exists()
    verbose = run([str(a).replace("{tmp}", str(tmp_path)) for a in args] + ["-v"])
    assert verbose.exit_code == 1 and "Traceback (most recent call last)" in verbose.stderr
