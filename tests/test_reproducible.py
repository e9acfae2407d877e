"""The same model, data and --seed give a byte-identical output model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import SAMPLES, write_calibration
from test_cli import run

MODEL = SAMPLES / "chains" / "b_bias_add_sigmoid.onnx"  # a Flatten→Gemm whose channels own H·W columns


def _compress_in_process(out: Path, data: Path, *options: str) -> bytes:
    result = run(["compress", MODEL, "--data", data, "-o", out, "-q", *options])
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def test_separate_processes_write_identical_bytes(tmp_path):
    """Two processes with different hash seeds (so set and dict-of-set orders differ) agree byte for byte."""
    data = write_calibration(MODEL, tmp_path)
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"p{hash_seed}.onnx"
        subprocess.run([sys.executable, "-m", "onnxprune.cli.main", "compress", str(MODEL), "--data", str(data),
                        "--target-flops", "0.5", "--seed", "7", "-o", str(out), "-q"],
                       env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True, timeout=300)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] == _compress_in_process(tmp_path / "in.onnx", data, "--target-flops", "0.5", "--seed", "7")


def test_random_ranking_is_seeded(tmp_path):
    data = write_calibration(MODEL, tmp_path)
    options = ("--method", "random", "--independent", "--target-params", "0.6", "--seed", "3")
    first = _compress_in_process(tmp_path / "a.onnx", data, *options)
    assert first == _compress_in_process(tmp_path / "b.onnx", data, *options)
