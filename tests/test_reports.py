"""compress --bench/--html, bench --html and sweep on a tiny CPU model: structure and units (timings never asserted)."""
from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxprune.bench.compare import BenchSettings
from onnxprune.compress import CompressOptions, compress
from onnxprune.errors import UsageError
from onnxprune.plan import GroupOutcome
from onnxprune.reporting.plots import groups_png

from conftest import SAMPLES, random_feed, run_cli

MODEL = SAMPLES / "chains" / "a_conv_bn_gap.onnx"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST_BENCH = ["--bench-runs", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """80 random samples with random labels among the model's 10 classes."""
    path = tmp_path_factory.mktemp("data") / "calib.npz"
    np.savez(path, **random_feed(MODEL, 80), label=np.random.default_rng(1).integers(0, 10, 80))
    return path


def run(*args):
    return run_cli(args)


def embedded_pngs(html_file: Path) -> list[bytes]:
    text = html_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def assert_one_line_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:") and text in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_compress_bench_adds_figures_to_summary_report_and_html(tmp_path, data):
    out, report, page = tmp_path / "m.onnx", tmp_path / "r.json", tmp_path / "r.html"
    result = run("compress", MODEL, "--data", data, "-o", out, "--target-flops", "0.5", "--bench-batch", "1,2",
                 *FAST_BENCH, "--report", report, "--html", page)
    assert result.exit_code == 0, result.output
    assert "p50 ms, batch 1" in result.stdout and "p50 ms, batch 2" in result.stdout
    doc = json.loads(report.read_text())
    assert "bench" in doc["timings"]
    bench = doc["bench"]
    assert bench["settings"]["batches"] == [1, 2] and bench["settings"]["runs"] == 3
    assert bench["settings"]["providers"] == ["cpu"]
    assert bench["units"]["latency"].startswith("ms") and "samples/s" in bench["units"]["throughput"]
    assert [m["model"] for m in bench["models"]] == [str(MODEL), str(out)]
    for model in bench["models"]:
        assert isinstance(model["file_bytes"], int) and model["macs"] > 0
        assert [r["batch"] for r in model["results"]] == [1, 2]
        for run_ in model["results"]:
            lat = run_["latency"]
            assert run_["provider"] == "CPUExecutionProvider" and run_["status"] == "ok" and lat["runs"] == 3
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert bench["models"][1]["macs"] < bench["models"][0]["macs"]
    for ratio, before, after in zip(bench["ratios"], *(m["results"] for m in bench["models"])):
        assert ratio["p50_ms_before"] == before["latency"]["p50_ms"]
        assert ratio["p50_ms_after"] == after["latency"]["p50_ms"]
        assert ratio["latency_ratio"] == pytest.approx(ratio["p50_ms_after"] / ratio["p50_ms_before"])
    pngs = embedded_pngs(page)
    assert len(pngs) == 2 and all(p.startswith(PNG_MAGIC) for p in pngs)  # groups, latency
    assert not list(tmp_path.glob("*.tmp"))


def test_compress_without_bench_has_null_bench_and_one_figure(tmp_path, data):
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    result = run("compress", MODEL, "--data", data, "-o", tmp_path / "m.onnx", "--target-flops", "0.6",
                 "--report", report, "--html", page, "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["bench"] is None
    assert len(embedded_pngs(page)) == 1


def test_bench_html(tmp_path):
    page = tmp_path / "b.html"
    result = run("bench", MODEL, "--batch", "1", "--runs", "3", "--warmup", "1", "--html", page, "-q")
    assert result.exit_code == 0, result.output
    pngs = embedded_pngs(page)
    assert len(pngs) == 1 and pngs[0].startswith(PNG_MAGIC)


def test_sweep_table_json_html_plot_and_models(tmp_path, data):
    js, page, png, models = tmp_path / "s.json", tmp_path / "s.html", tmp_path / "s.png", tmp_path / "models"
    models.mkdir()
    result = run("sweep", MODEL, "--data", data, "--targets", "50%,0.8", "--holdout", "0.25", *FAST_BENCH,
                 "--json", js, "--html", page, "--plot", png, "--out-dir", models)
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["target", "FLOPs", "params"]
    assert [line.split()[0] for line in table[1:4]] == ["original", "80%", "50%"]
    doc = json.loads(js.read_text())
    assert doc["original"]["flops"] > 0 and 0 <= doc["original"]["accuracy"] <= 1
    assert doc["latency"] == {"provider": "cpu", "batch": 1, "runs": 3, "rounds": 3, "threads": doc["latency"]["threads"]}
    assert doc["holdout_samples"] == 20 and doc["pareto_by"] in ("latency", "flops")
    assert [p["target_flops"] for p in doc["points"]] == [0.8, 0.5]
    for point in doc["points"]:
        assert 0 < point["flops_kept"] <= point["target_flops"] and 0 < point["params_kept"] <= 1
        assert 0 <= point["top1_agreement"] <= 1 and point["relative_error"] >= 0 and 0 <= point["accuracy"] <= 1
        assert point["latency_p50_ms"] > 0 and point["latency_ratio"] > 0 and isinstance(point["pareto"], bool)
        assert Path(point["output"]).parent == models and Path(point["output"]).exists()
    assert sorted(p.name for p in models.iterdir()) == ["a_conv_bn_gap.flops50.onnx", "a_conv_bn_gap.flops80.onnx"]
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert len(embedded_pngs(page)) == 1
    again = run("sweep", MODEL, "--data", data, "--targets", "0.8", "--out-dir", models)
    assert_one_line_error(again, 4, "already exists")


@pytest.mark.parametrize("args, text", [
    (["--targets", "0.5,1.5"], "--targets must be in (0, 1]"),
    (["--holdout", "0"], "held-out samples"),
    (["--json", "/no/such/dir/s.json"], "does not exist"),
    (["--out-dir", "/no/such/dir"], "does not exist"),
])
def test_sweep_bad_options_fail_before_work(data, args, text):
    assert_one_line_error(run("sweep", MODEL, "--data", data, *args), 4, text)


def test_missing_matplotlib_is_one_usage_error(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "m.onnx"
    result = run("compress", MODEL, "--data", data, "-o", out, "--html", tmp_path / "r.html")
    assert_one_line_error(result, 4, "--html needs matplotlib")
    assert "pip install 'onnxprune[plot]'" in result.stderr
    assert not out.exists()
    result = run("sweep", MODEL, "--data", data, "--plot", tmp_path / "s.png")
    assert_one_line_error(result, 4, "--plot needs matplotlib")


def test_bench_needs_an_output_path(data):
    with pytest.raises(UsageError, match="output path"):
        compress(MODEL, data, CompressOptions(bench=BenchSettings()))


def test_bench_times_dynamic_dims_at_the_calibration_size(tmp_path):
    """A model whose height and width are symbolic is timed at the calibration data's size (compress has no
    --shape option to give one)."""
    import onnx

    model = onnx.load(str(MODEL))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{model.graph.input[0].name: np.random.default_rng(0).standard_normal(
        (16, dims[1].dim_value, 12, 20)).astype(np.float32)})
    result = compress(path, calib, CompressOptions(bench=BenchSettings(batches=(1,), runs=2, warmup=1, rounds=1)),
                      output=tmp_path / "p.onnx")
    runs = [run for side in (result.report.bench.original, result.report.bench.pruned) for run in side.runs]
    assert runs and all(run.ok for run in runs)
    assert all(list(run.input_shapes.values()) == [[1, dims[1].dim_value, 12, 20]] for run in runs)


def test_groups_figure_only_for_prunable_groups():
    frozen = GroupOutcome(0, "conv", 8, 8, None, ["c"], ["p"], reasons=["graph output"])
    assert groups_png([frozen]) is None
    kept = GroupOutcome(1, "fc", 16, 4, 0.02, ["fc"], ["conv"])
    assert groups_png([frozen, kept]).startswith(PNG_MAGIC)


def test_failed_bench_leaves_no_output(tmp_path, data, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxprune.compress.compare_models", fail)
    out = tmp_path / "m.onnx"
    with pytest.raises(KeyboardInterrupt):
        compress(MODEL, data, CompressOptions(bench=BenchSettings()), output=out)
    assert list(tmp_path.iterdir()) == []


def test_failed_sweep_removes_the_models_it_wrote(tmp_path, data, monkeypatch):
    def fail(*args, **kwargs):
        raise UsageError("no latency today")

    monkeypatch.setattr("onnxprune.sweep.benchmark_models", fail)
    result = run("sweep", MODEL, "--data", data, "--targets", "0.7", "--out-dir", tmp_path)
    assert_one_line_error(result, 4, "no latency today")
    assert list(tmp_path.iterdir()) == []
