"""Shared fixtures: the committed sample models and random calibration data for them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
SHARED = ROOT.parent / "shared" / "data"
CHAIN_MODELS = sorted((SAMPLES / "chains").glob("**/*.onnx"))
sys.path.insert(0, str(SAMPLES))  # the sample-model builders, importable by every test module


@pytest.fixture(autouse=True)
def exact_cpu_counts(monkeypatch):
    """Every test sees a CPU without channel blocks (exact counts by default), whatever CPU runs the suite;
    the tests of the CPU-block defaults set ``ONNXPRUNE_CPU_BLOCK`` themselves."""
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "1")


def run_cli(args) -> object:
    """Invoke the onnxprune CLI in-process with the given arguments (any path-like is turned into str)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_feed(path: Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n random samples for every input of the model (static dims kept, dynamic ones set to n / 1)."""
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in real_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        feed[inp.name] = rng.standard_normal((n, *dims[1:])).astype(np.float32)
    return feed


def write_calibration(path: Path, tmp_path: Path, n: int = 48, seed: int = 0) -> Path:
    """An .npz of random calibration data for a model, in tmp_path."""
    out = tmp_path / f"{path.stem}_calib.npz"
    np.savez(out, **random_feed(path, n, seed))
    return out


def run_model(model: onnx.ModelProto | str | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model sample by sample when its batch is fixed, else in one call."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    first = sess.get_inputs()[0]
    n = next(iter(feed.values())).shape[0]
    if isinstance(first.shape[0], int) and first.shape[0] != n:
        parts = [sess.run(None, {k: v[i:i + 1] for k, v in feed.items()}) for i in range(n)]
        return [np.concatenate(p) for p in zip(*parts)]
    return sess.run(None, feed)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(a.astype(np.float64)), 1e-30))


@pytest.fixture(params=CHAIN_MODELS, ids=lambda p: p.stem)
def chain_model(request) -> Path:
    return request.param
