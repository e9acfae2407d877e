"""The CPU default of --round-to: counts onnxruntime's blocked convolutions run fast (compress.backend_counts)."""
from __future__ import annotations

import json

import onnx
import pytest

from onnxprune.analysis.groups import find_groups
from onnxprune.bench.profile import cpu_channel_block
from onnxprune.compress import backend_counts
from onnxprune.errors import UsageError
from onnxprune.plan import AllocationSettings, grouped_conv_groups

from conftest import SAMPLES, run_cli

VGG = SAMPLES / "zoo" / "vgg_bn.ts.onnx"


def test_the_default_rounds_to_the_cpu_block_only_on_the_cpu_and_for_speed(monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "16")
    notes: list[str] = []
    fast = backend_counts(AllocationSettings(), "cpu", True, notes)
    assert (fast.round_to, fast.allow_below) == (16, True)
    assert "multiples of 16 or fewer than 16, except before a depthwise" in notes[0] and "--round-to 1" in notes[0]
    quiet: list[str] = []
    assert backend_counts(AllocationSettings(), "cpu", False, quiet).round_to == 1
    assert backend_counts(AllocationSettings(), "cuda", True, quiet).round_to == 1
    assert backend_counts(AllocationSettings(round_to=4), "cpu", True, quiet).round_to == 4
    assert not quiet
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "1")
    assert backend_counts(AllocationSettings(), "cpu", True, quiet).round_to == 1
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "sixteen")
    with pytest.raises(UsageError, match="ONNXPRUNE_CPU_BLOCK"):
        cpu_channel_block()


def test_compress_on_the_cpu_keeps_block_counts_by_default_and_exact_ones_with_round_to_1(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "8")
    data = VGG.with_name("vgg_bn.npz")
    runs = {}
    for name, extra in (("default", ["--target-flops", "0.5"]), ("exact", ["--target-flops", "0.5", "--round-to", "1"]),
                        ("params", ["--target-params", "0.5"])):
        out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        result = run_cli(["compress", VGG, "--data", data, "--num-samples", "32", "-o", out, "--report", report,
                          *extra])
        assert result.exit_code == 0, result.output
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
        runs[name] = json.loads(report.read_text())
    default, exact = runs["default"], runs["exact"]
    assert any("multiples of 8 or fewer than 8" in n for n in default["notes"])
    assert not any("multiples of 8" in n for n in exact["notes"] + runs["params"]["notes"])
    for run in (default, exact):
        assert 0.48 <= run["flops"]["after"] / run["flops"]["before"] <= 0.5
    cut = [g for g in default["groups"] if g["after"] < g["before"]]
    assert cut and all(g["after"] % 8 == 0 or g["after"] < 8 for g in cut if g["before"] % 8 == 0)
    assert any(g["after"] % 8 and g["after"] >= 8 for g in exact["groups"] if g["before"] % 8 == 0)


def test_a_group_a_depthwise_convolution_reads_keeps_whole_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CPU_BLOCK", "8")
    model_path = SAMPLES / "zoo" / "mobilenet_v2.ts.onnx"
    model = onnx.load(str(model_path))
    analysis = find_groups(model, None)
    depthwise = grouped_conv_groups(model, analysis)
    names = {analysis.groups[i].name for i in depthwise}
    assert len(depthwise) == 3 and all(analysis.groups[i].size > 8 for i in depthwise)   # the expansions
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = run_cli(["compress", model_path, "--data", model_path.with_name("mobilenet_v2.npz"), "--num-samples", "32",
                      "--target-flops", "0.5", "-o", out, "--report", report])
    assert result.exit_code == 0, result.output
    groups = json.loads(report.read_text())["groups"]
    read_by_depthwise = [g for g in groups if g["name"] in names]
    assert read_by_depthwise and all(g["after"] % 8 == 0 for g in read_by_depthwise)
    assert any(g["after"] < g["before"] for g in read_by_depthwise)
    assert any(g["after"] % 8 for g in groups if g["name"] not in names)   # the others may go below a block
