"""GroupNormalization (opset 21) is pruned by whole groups: keep-all is exact, half the FLOPs keeps whole groups."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.analysis import find_groups
from onnxprune.compress import CompressOptions, compress
from onnxprune.graph.io import load_model
from onnxprune.metrics import count_model
from onnxprune.plan import Target

from conftest import random_feed, relative_error, run_model, write_calibration

from chain_cnns import _Builder  # sample_models is not a package

GROUPS, CHANNELS = 4, 16


def _groupnorm_model() -> onnx.ModelProto:
    """Conv(3→16) → GroupNormalization(4 groups) → Relu → Conv(16→8) → GlobalAveragePool → Flatten → Gemm."""
    b = _Builder(0)
    x = b.conv("input", 3, CHANNELS, 3, "conv1", pad=1)
    x = b.node("GroupNormalization", [x, b.init("gn.scale", b.rng.uniform(0.5, 1.5, CHANNELS)),
                                      b.init("gn.bias", b.small((CHANNELS,)))], name="gn", num_groups=GROUPS)
    x = b.node("Relu", [x])
    x = b.conv(x, CHANNELS, 8, 3, "conv2", pad=1)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    b.gemm(x, 8, 5, "fc", out="output")
    graph = helper.make_graph(b.nodes, "groupnorm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])], b.inits,
                              # ONNX shape inference leaves GroupNormalization-21 outputs untyped: give it, with a static batch
                              value_info=[helper.make_tensor_value_info("gn", TensorProto.FLOAT, [1, CHANNELS, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _saved(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "gn.onnx"
    onnx.save(_groupnorm_model(), path)
    return path, write_calibration(path, tmp_path, n=48)


def test_groups_are_units():
    analysis = find_groups(_groupnorm_model())
    classes = analysis.classes_of("conv1").reshape(GROUPS, -1)
    assert (classes == classes[:, :1]).all() and len(set(classes[:, 0].tolist())) == GROUPS
    assert not analysis.blocked


def test_keep_all_reproduces_outputs(tmp_path):
    path, data = _saved(tmp_path)
    result = compress(path, data, CompressOptions(target=Target("flops", 1.0), num_samples=8, holdout=0.0))
    feed = random_feed(path, 5, seed=3)
    for a, b in zip(run_model(path, feed), run_model(result.model, feed)):
        assert relative_error(a, b) < 1e-4


def test_half_flops_removes_whole_groups(tmp_path):
    path, data = _saved(tmp_path)
    result = compress(path, data, CompressOptions(target=Target("flops", 0.5), num_samples=32, holdout=0.25))
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    out = run_model(pruned, random_feed(path, 4, seed=3))[0]
    assert out.shape == (4, 5) and np.isfinite(out).all()
    assert count_model(pruned).flops < count_model(load_model(path)).flops
    gn = next(n for n in pruned.graph.node if n.op_type == "GroupNormalization")
    inits = {i.name: i for i in pruned.graph.initializer}
    kept = inits[gn.input[1]].dims[0]
    num_groups = helper.get_attribute_value(next(a for a in gn.attribute if a.name == "num_groups"))
    assert kept < CHANNELS and kept % (CHANNELS // GROUPS) == 0
    assert num_groups == kept // (CHANNELS // GROUPS) and inits[gn.input[2]].dims[0] == kept
