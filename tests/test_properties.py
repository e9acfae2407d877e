"""Property-based: random tiny chain and residual CNNs, compressed at random targets, give valid models.

Examples are derandomized (the same ones every run) so the file's run time is stable.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.compress import CompressOptions, compress
from onnxprune.errors import UsageError
from onnxprune.plan import Target

from conftest import random_feed, relative_error, run_model, write_calibration
from test_compress import _signature

from chain_cnns import _Builder, _vi  # the sample models' graph builder

SETTINGS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Block:
    kind: str          # "conv", "residual" (two convs + skip Add, 1x1 projection if the shape changes), "maxpool", "avgpool"
    width: int = 0
    kernel: int = 1
    stride: int = 1
    bn: bool = False


@dataclass(frozen=True)
class Architecture:
    size: int
    channels: int
    blocks: tuple[Block, ...]
    head: str          # "gap": GlobalAveragePool→Flatten→Gemm; "flatten": Flatten→Gemm (a channel owns H·W columns)
    hidden: int        # width of a Gemm→Relu before the last Gemm; 0 for none
    classes: int
    opset: int
    batch: int | str
    seed: int


blocks = st.one_of(
    st.builds(Block, st.just("conv"), st.integers(1, 6), st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.booleans()),
    st.builds(Block, st.just("residual"), st.integers(1, 6), st.sampled_from([1, 3]), st.sampled_from([1, 2]),
              st.booleans()),
    st.builds(Block, st.sampled_from(["maxpool", "avgpool"])),
)
architectures = st.builds(
    Architecture, st.integers(4, 8), st.sampled_from([1, 3]), st.lists(blocks, min_size=1, max_size=4).map(tuple),
    st.sampled_from(["gap", "flatten"]), st.sampled_from([0, 0, 3, 6]), st.integers(2, 4), st.sampled_from([11, 13, 17]),
    st.sampled_from(["N", 1]), st.integers(0, 999))


def build(arch: Architecture) -> onnx.ModelProto:
    """The ONNX model of ``arch``: Conv(+BN)+Relu blocks, residual blocks and pooling, then a Gemm head."""
    b = _Builder(arch.seed)
    x, c, s = "input", arch.channels, arch.size
    for i, blk in enumerate(arch.blocks):
        if blk.kind in ("maxpool", "avgpool"):
            if s >= 2:
                op = "MaxPool" if blk.kind == "maxpool" else "AveragePool"
                x, s = b.node(op, [x], name=f"pool{i}", kernel_shape=[2, 2], strides=[2, 2]), s // 2
            continue
        if blk.kind == "conv":
            x = _conv_bn(b, x, c, blk.width, blk, f"{i}", stride=blk.stride)
        else:
            y = b.node("Relu", [_conv_bn(b, x, c, blk.width, blk, f"{i}a", stride=blk.stride)], name=f"relu{i}a")
            y = _conv_bn(b, y, blk.width, blk.width, blk, f"{i}b")
            same = blk.width == c and blk.stride == 1
            skip = x if same else b.conv(x, c, blk.width, 1, f"proj{i}", strides=[blk.stride, blk.stride])
            x = b.node("Add", [y, skip], name=f"add{i}")
        c, s = blk.width, (s - 1) // blk.stride + 1
        x = b.node("Relu", [x], name=f"relu{i}")
    if arch.head == "gap":
        x = b.node("GlobalAveragePool", [x], name="gap")
        s = 1
    x, width = b.node("Flatten", [x], name="flatten", axis=1), c * s * s
    if arch.hidden:
        x, width = b.node("Relu", [b.gemm(x, width, arch.hidden, "fc_hidden")], name="relu_hidden"), arch.hidden
    b.gemm(x, width, arch.classes, "fc", out="logits")
    return b.model("random_cnn", [_vi("input", [arch.batch, arch.channels, arch.size, arch.size])],
                   [_vi("logits", [arch.batch, arch.classes])], arch.opset, repr(arch))


def _conv_bn(b: _Builder, x: str, cin: int, cout: int, blk: Block, name: str, stride: int = 1) -> str:
    x = b.conv(x, cin, cout, blk.kernel, f"conv{name}", pad=blk.kernel // 2, strides=[stride, stride])
    return b.bn(x, cout, f"bn{name}") if blk.bn else x


def _assert_valid(pruned: onnx.ModelProto, original: onnx.ModelProto, path: Path) -> list[np.ndarray]:
    """Full checker, same input/output names, types and shapes; returns the outputs on a random feed."""
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(pruned) == _signature(original)
    outputs = run_model(pruned, random_feed(path, 3, seed=1))
    assert all(np.isfinite(o).all() for o in outputs)
    return outputs


def _saved(arch: Architecture, folder: str) -> tuple[onnx.ModelProto, Path, Path]:
    model = build(arch)
    onnx.checker.check_model(model, full_check=True)
    path = Path(folder) / "model.onnx"
    onnx.save(model, str(path))
    return model, path, write_calibration(path, Path(folder), n=24, seed=arch.seed)


@settings(SETTINGS, max_examples=40)
@given(architectures)
def test_keep_all_reproduces_outputs(arch):
    with tempfile.TemporaryDirectory() as folder:
        model, path, data = _saved(arch, folder)
        result = compress(path, data, CompressOptions(target=Target("flops", 1.0)))
        outputs = _assert_valid(result.model, model, path)
        for before, after in zip(run_model(model, random_feed(path, 3, seed=1)), outputs):
            assert relative_error(before, after) < 1e-5


@settings(SETTINGS, max_examples=30)
@given(architectures, st.sampled_from(["flops", "params"]), st.floats(0.3, 0.95))
def test_pruned_model_is_valid_and_meets_the_target(arch, kind, fraction):
    with tempfile.TemporaryDirectory() as folder:
        model, path, data = _saved(arch, folder)
        try:
            result = compress(path, data, CompressOptions(target=Target(kind, fraction), holdout=0.25))
        except UsageError as exc:  # frozen channels (graph output, the Gemm head) can make a target unreachable
            assert "cannot be reached" in exc.message
            return
        _assert_valid(result.model, model, path)
        if any(g.prunable for g in result.analysis.groups):
            assert result.report.achieved(kind) <= fraction + 1e-9
