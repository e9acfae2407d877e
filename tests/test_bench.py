"""onnxprune bench on tiny CPU models: structure and units of the results (timings are not asserted)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.bench import (
    BenchResult,
    ProviderSpec,
    benchmark,
    benchmark_models,
    format_table,
    make_session,
    parse_shape_overrides,
    resolve_providers,
    resolve_shapes,
    to_document,
    write_json,
)
from onnxprune.bench.inputs import feeds_for_batch, input_specs, random_feeds
from onnxprune.cli.main import cli
from onnxprune.errors import DataError, ModelError, ProviderError, UsageError

HAS_CUDA_BUILD = "CUDAExecutionProvider" in ort.get_available_providers()
FAST = dict(runs=5, warmup=1, rounds=1)


def _cnn(path, channels: int, batch="N", spatial=(8, 8), ir_version=8):
    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        [w, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return _cnn(folder / "big.onnx", 16), _cnn(folder / "small.onnx", 8)


@pytest.fixture(scope="module")
def two_results(models):
    return benchmark_models(list(models), batches=[1, 2], **FAST)


# ------------------------------------------------------------------------------------------- library


def test_benchmark_results_structure(two_results, models):
    assert [r.model for r in two_results] == [str(m) for m in models]
    for result in two_results:
        assert isinstance(result, BenchResult)
        assert result.file_bytes == os.path.getsize(result.model)
        assert result.params > 0 and result.macs > 0
        assert [(r.provider_requested, r.batch) for r in result.runs] == [("cpu", 1), ("cpu", 2)]
        for run in result.runs:
            assert run.ok and run.provider == "CPUExecutionProvider" and not run.fallback
            lat = run.latency
            assert lat.runs == 5
            assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
            assert run.throughput == pytest.approx(run.batch / (lat.mean_ms / 1e3))
            assert run.input_shapes == {"x": [run.batch, 3, 8, 8]}
            assert run.memory.isolated and run.memory.host_source.startswith(("VmHWM", "ru_maxrss"))
            assert isinstance(run.memory.host_peak_bytes, int) and run.memory.host_peak_bytes >= 0
            assert run.memory.device_bytes is None
    # the counts are those of count_model: conv 64 positions x C x 27, fc C x 10
    big, small = two_results
    assert big.macs == 64 * 16 * 27 + 16 * 10 and small.macs == 64 * 8 * 27 + 8 * 10
    assert big.params == 16 * 27 + 160


def test_to_dict_keys_and_units(two_results):
    doc = to_document(two_results, {"runs": 5})
    json.dumps(doc, allow_nan=False)
    assert doc["units"]["latency"].startswith("ms") and doc["units"]["throughput"].startswith("samples/s")
    model = doc["models"][0]
    assert {"model", "model_name", "file_bytes", "file_mb", "params", "macs", "notes", "results"} <= model.keys()
    assert model["file_mb"] == pytest.approx(model["file_bytes"] / 1e6, abs=1e-3)
    run = model["results"][0]
    assert {"provider_requested", "provider", "fallback", "batch", "status", "threads", "warmup_runs",
            "input_shapes", "latency", "throughput_samples_per_s", "memory"} <= run.keys()
    assert set(run["latency"]) == {"runs", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms"}
    assert {"host_peak_bytes", "host_peak_mb", "host_session_bytes", "device_bytes", "device_source"} <= run["memory"].keys()


def test_table_has_ratio_columns(two_results):
    text = format_table(two_results)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "prov", "batch", "p50", "p90", "p99", "thrpt", "peak", "file", "params",
                                "MACs", "lat", "thr", "size"]
    assert lines[1].split() == ["ms", "ms", "ms", "1/s", "MB", "MB", "x", "x", "x"]
    assert lines[3].startswith("big") and lines[3].split()[-3:] == ["1.00", "1.00", "1.00"]
    small_row = next(line for line in lines if line.startswith("small"))
    size_ratio = float(small_row.split()[-1])
    assert size_ratio == pytest.approx(two_results[1].file_bytes / two_results[0].file_bytes, abs=0.01)
    assert max(len(line) for line in lines) <= 104
    single = format_table(two_results[:1]).splitlines()[0]
    assert "lat" not in single.split()


def test_rounds_interleave_the_models_and_pool_their_runs(models):
    lines = []
    results = benchmark_models(list(models), batches=[1, 2], runs=5, warmup=0, rounds=2, progress=lines.append)
    order = [line.split("] ", 1)[1] for line in lines]
    assert order == [f"{name}.onnx on cpu, batch {b}, round {r}/2" for r in (1, 2) for name in ("big", "small") for b in (1, 2)]
    for result in results:
        for run in result.runs:
            assert run.rounds == 2 and run.latency.runs == 5  # 3 + 2 runs pooled
            assert run.to_dict()["rounds"] == 2


@pytest.mark.parametrize("runs, seconds, rounds, shares", [
    (10, None, 3, [4, 3, 3]),
    (2, None, 5, [1, 1]),  # never an empty round
    (None, 3.0, 3, [1.0, 1.0, 1.0]),
])
def test_round_shares_split_the_runs_or_seconds(runs, seconds, rounds, shares):
    from onnxprune.bench.measure import _round_shares

    split = _round_shares(rounds, runs, seconds)
    assert [s["runs"] if runs is not None else s["seconds"] for s in split] == shares


def test_seconds_budget_and_in_process(models):
    result = benchmark(models[1], seconds=0.05, warmup=0, isolate=False)
    run = result.runs[0]
    assert run.latency.runs >= 1 and not run.memory.isolated


def test_fixed_batch_is_skipped_with_a_note(tmp_path):
    path = _cnn(tmp_path / "fixed.onnx", 4, batch=1)
    result = benchmark(path, batches=[1, 4], **FAST)
    ok, skipped = result.runs
    assert ok.ok and ok.batch == 1
    assert skipped.status == "skipped" and skipped.latency is None and "fixed batch 1" in skipped.note
    assert "fixed batch 1" in format_table([result])
    assert to_document([result])["models"][0]["results"][1]["status"] == "skipped"


def test_dynamic_spatial_dims_need_shapes(tmp_path):
    path = _cnn(tmp_path / "dyn.onnx", 4, spatial=("H", "W"))
    with pytest.raises(UsageError, match="dynamic dim 2"):
        benchmark(path, **FAST)
    result = benchmark(path, batches=[3], shapes=["x:1x3x12x10"], **FAST)
    assert result.runs[0].input_shapes == {"x": [3, 3, 12, 10]}  # the batch replaces the dynamic first dim


def test_feeds_are_used_and_repeated_to_the_batch(models):
    feeds = {"x": np.ones((3, 3, 8, 8), dtype=np.float64)}
    result = benchmark(models[0], batches=[2, 5], feeds=feeds, **FAST)
    assert [r.input_shapes["x"][0] for r in result.runs] == [2, 5]
    specs = input_specs(onnx.load(str(models[0])))
    arrays = feeds_for_batch(feeds, specs, 5)
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (5, 3, 8, 8)
    with pytest.raises(DataError, match="no data for input"):
        feeds_for_batch({"other": feeds["x"]}, specs, 1)


def test_shape_parsing_and_validation():
    assert parse_shape_overrides(["input:1x3x224x224", "tf:0:2,5"]) == {"input": (1, 3, 224, 224), "tf:0": (2, 5)}
    for bad in ["input", "input:1xx3", "input:0x3", ":1x2", "input:1x-3"]:
        with pytest.raises(UsageError):
            parse_shape_overrides([bad])
    specs = input_specs(onnx.load_from_string(_model_bytes()))
    with pytest.raises(UsageError, match="does not have"):
        resolve_shapes(specs, 1, {"nope": (1, 3, 8, 8)})
    with pytest.raises(UsageError, match="rank 4"):
        resolve_shapes(specs, 1, {"x": (1, 3, 8)})
    with pytest.raises(UsageError, match="fixes it at 3"):
        resolve_shapes(specs, 1, {"x": (1, 4, 8, 8)})
    assert resolve_shapes(specs, 7, {}) == {"x": (7, 3, 8, 8)}


def _model_bytes():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = _cnn(os.path.join(tmp, "m.onnx"), 2)
        with open(path, "rb") as handle:
            return handle.read()


def test_random_feeds_dtypes():
    feeds = random_feeds({"f": (2, 3), "i": (4,), "b": (2,)}, {"f": "float16", "i": "int64", "b": "bool"})
    assert feeds["f"].dtype == np.float16 and feeds["f"].shape == (2, 3)
    assert feeds["i"].dtype == np.int64 and feeds["i"].min() >= 0 and feeds["i"].max() < 10
    assert feeds["b"].dtype == np.bool_


def test_model_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        benchmark(tmp_path / "missing.onnx", **FAST)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 10)
    with pytest.raises(ModelError):
        benchmark(bad, **FAST)


def test_options_are_validated(models):
    with pytest.raises(UsageError, match="not both"):
        benchmark(models[0], runs=3, seconds=1.0)
    with pytest.raises(UsageError):
        benchmark(models[0], batches=[0])
    with pytest.raises(UsageError, match="unknown execution provider"):
        resolve_providers(["gpu"])


# ----------------------------------------------------------------------------------------- providers


@pytest.mark.skipif(HAS_CUDA_BUILD, reason="this onnxruntime build has CUDA")
def test_unavailable_provider_raises_or_falls_back():
    with pytest.raises(ProviderError) as info:
        resolve_providers(["cuda"])
    assert "Requested provider 'cuda' (CUDAExecutionProvider) is not available" in info.value.message
    assert "onnxprune[gpu]" in info.value.note and "--allow-fallback" in info.value.note
    (spec,) = resolve_providers(["cuda"], allow_fallback=True)
    assert spec.requested == "cuda" and spec.name == "CPUExecutionProvider" and spec.fallback_reason


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_gpu_fallback_is_detected(monkeypatch, models):
    """onnxruntime-gpu without CUDA libraries lists CUDA but runs the session on CPU: that must not pass as GPU."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    (spec,) = resolve_providers(["cuda"])
    assert spec.name == "CUDAExecutionProvider"
    if not HAS_CUDA_BUILD:
        with pytest.raises(ProviderError, match="could not be used"):
            make_session(models[0], spec, threads=1)
        fallback = ProviderSpec(**{**spec.__dict__, "allow_fallback": True})
        session = make_session(models[0], fallback, threads=1)
        assert session.get_providers() == ["CPUExecutionProvider"]
        result = benchmark(models[0], providers=[fallback], isolate=False, **FAST)
        assert result.runs[0].fallback and result.runs[0].provider == "CPUExecutionProvider"
        assert result.runs[0].provider_requested == "cuda"


def test_tensorrt_options():
    real = ort.get_available_providers()
    import unittest.mock as mock

    with mock.patch.object(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", *real]):
        (spec,) = resolve_providers(["tensorrt"], trt_fp16=True, trt_cache_dir="/tmp/cache", trt_workspace_gb=2, device_id=1)
    names = [name for name, _ in spec.chain]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = spec.chain[0][1]
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == "/tmp/cache"
    assert opts["trt_max_workspace_size"] == 2 * 2**30 and opts["device_id"] == 1
    assert ProviderSpec.from_dict(spec.to_dict()) == spec


# ----------------------------------------------------------------------------------------------- CLI


def _invoke(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args)])


def test_cli_two_models_table_and_json(models, tmp_path):
    out = tmp_path / "res.json"
    result = _invoke(*models, "--batch", "1,2", "--runs", 5, "--warmup", 1, "--rounds", 2, "--threads", 1, "--json", out)
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header[-3:] == ["lat", "thr", "size"]
    assert "small" in result.stdout
    doc = json.loads(out.read_text())
    assert [f.name for f in tmp_path.iterdir()] == ["res.json"]  # atomic write left no temp file
    assert doc["settings"]["runs"] == 5 and doc["settings"]["threads"] == 1 and doc["settings"]["batches"] == [1, 2]
    assert doc["settings"]["rounds"] == 2 and "in 2 interleaved round(s)" in " ".join(result.stdout.split())
    assert len(doc["models"]) == 2
    for model in doc["models"]:
        assert isinstance(model["file_bytes"], int) and isinstance(model["file_mb"], float)
        for run in model["results"]:
            lat = run["latency"]
            assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
            assert run["throughput_samples_per_s"] == pytest.approx(run["batch"] / (lat["mean_ms"] / 1e3))
            assert run["threads"] == 1 and run["provider"] == "CPUExecutionProvider"
            assert run["rounds"] == 2 and lat["runs"] == 5
            assert isinstance(run["memory"]["host_peak_bytes"], int)


@pytest.mark.skipif(HAS_CUDA_BUILD, reason="this onnxruntime build has CUDA")
def test_cli_cuda_without_gpu_build_exits_5(models):
    result = _invoke(models[0], "--provider", "cuda")
    assert result.exit_code == 5
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: Requested provider 'cuda'")
    assert "pip install 'onnxprune[gpu]'" in lines[0] and "--allow-fallback" in lines[0]
    assert result.stdout == ""


@pytest.mark.skipif(HAS_CUDA_BUILD, reason="this onnxruntime build has CUDA")
def test_cli_allow_fallback_runs_on_cpu_and_records_it(models, tmp_path):
    out = tmp_path / "fb.json"
    result = _invoke(models[0], "--provider", "cuda", "--allow-fallback", "--runs", 3, "--warmup", 0, "--rounds", 1,
                     "--json", out)
    assert result.exit_code == 0, result.output
    assert "cpu*" in result.stdout and "--allow-fallback" in result.stdout
    run = json.loads(out.read_text())["models"][0]["results"][0]
    assert run["provider_requested"] == "cuda" and run["provider"] == "CPUExecutionProvider" and run["fallback"]
    assert "CUDAExecutionProvider" in run["note"]


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["--shape", "nope:1x3x8x8"], 4, "does not have"),
        (["--shape", "x:1x3x8"], 4, "rank 4"),
        (["--shape", "x:1by3"], 4, "cannot read the dims"),
        (["--batch", "1,zero"], 4, "--batch 'zero'"),
        (["--runs", "3", "--seconds", "1"], 4, "not both"),
        (["--rounds", "0"], 4, "--rounds must be >= 1"),
        (["--provider", "gpu"], 4, "unknown --provider"),
    ],
)
def test_cli_bad_options_give_one_line(models, args, code, text):
    result = _invoke(models[0], *args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:") and text in lines[0]
    assert "Traceback" not in result.output


def test_cli_model_errors_exit_2(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 7)
    for path in (tmp_path / "missing.onnx", bad):
        result = _invoke(path)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_write_json_is_atomic(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    with pytest.raises(UsageError):
        write_json(tmp_path / "missing" / "x.json", {})


def test_worker_errors_come_back_as_one_line(tmp_path):
    """A model onnx can read but onnxruntime cannot load: ModelError raised in the worker, re-raised here."""
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="nowhere.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere.example", 1)])
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        benchmark(path, **FAST)
    result = _invoke(path, "--runs", 2)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_minus_one_and_zero_dims_are_dynamic():
    """paddle2onnx writes an unknown batch as -1 (and some exporters 0): a dynamic dim, not a fixed batch."""
    from onnx import TensorProto, helper

    from onnxprune.bench.inputs import fixed_batch

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [0, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x, z], [y])
    specs = input_specs(helper.make_model(graph))
    assert [s.shape for s in specs] == [(None, 3, "?", "?"), (None, 3)]
    assert fixed_batch(specs) is None
