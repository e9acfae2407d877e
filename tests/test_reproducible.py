"""The same model, data and --seed give a byte-identical output model (README "Reproducibility")."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import SAMPLES, write_calibration
from test_cli import run

MODEL = SAMPLES / "chains" / "b_bias_add_sigmoid.onnx"  # a Flatten→Gemm whose channels own H·W columns
RESNET = SAMPLES / "zoo" / "resnet_basic.ts.onnx"         # residual blocks, Gram-sized statistics, error-correcting


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


def _compress_in_subprocess(out: Path, **env: str) -> Path:
    subprocess.run([sys.executable, "-m", "onnxprune.cli.main", "compress", str(RESNET), "--data",
                    str(RESNET.with_name("resnet_basic.npz")), "--target-flops", "0.5", "-o", str(out), "-q"],
                   env={**os.environ, **env}, check=True, timeout=300)
    return out


def test_blas_thread_counts_write_identical_bytes(tmp_path):
    one = _compress_in_subprocess(tmp_path / "t1.onnx", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    two = _compress_in_subprocess(tmp_path / "t2.onnx", OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    assert one.read_bytes() == two.read_bytes()


def _dynamic_openblas() -> bool:
    blas = np.show_config(mode="dicts")["Build Dependencies"].get("blas", {})
    return "openblas" in blas.get("name", "") and "DYNAMIC_ARCH" in blas.get("openblas configuration", "")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not _dynamic_openblas(),
                    reason="needs numpy with a DYNAMIC_ARCH OpenBLAS on x86-64 (OPENBLAS_CORETYPE picks its kernel)")
def test_another_blas_kernel_keeps_the_same_channels(tmp_path):
    """Another CPU's BLAS kernel rounds otherwise: the same channels are kept, weights agree to float32 round-off."""
    own = onnx.load(str(_compress_in_subprocess(tmp_path / "own.onnx")))
    other = onnx.load(str(_compress_in_subprocess(tmp_path / "haswell.onnx", OPENBLAS_CORETYPE="Haswell")))
    a = {i.name: numpy_helper.to_array(i) for i in own.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in other.graph.initializer}
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    for name, value in a.items():
        np.testing.assert_allclose(b[name], value, rtol=1e-5, atol=1e-6 * float(np.abs(value).max(initial=1.0)))
