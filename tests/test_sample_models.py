"""The sample models under sample_models/ are valid, runnable and as documented.

No torch needed; everything here runs in a few seconds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
CHAINS = SAMPLES / "chains"

# Generated locally but never committed (see sample_models/.gitignore).
NOT_COMMITTED = {"vgg16_cifar.onnx"}


def _load_module(name: str):
    """Import sample_models/<name>.py (sample_models is not a package)."""
    mod_name = f"_onnxprune_sample_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, SAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def _committed_models():
    # lookalikes/ (dynamic H/W detectors that need H, W multiples of 32, and the git-ignored full/ variant)
    # are checked at their real resolutions by tests/test_lookalikes.py.
    return sorted(p for p in SAMPLES.rglob("*.onnx")
                  if p.name not in NOT_COMMITTED and not p.name.endswith(".pruned.onnx")
                  and "lookalikes" not in p.relative_to(SAMPLES).parts)


def _feed(model: onnx.ModelProto, batch: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:  # IR < 4 lists initializers as graph inputs
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in vi.type.tensor_type.shape.dim]
        feed[vi.name] = rng.uniform(0.0, 1.0, dims).astype(np.float32)
    return feed


def _session(model_or_path):
    src = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- committed files
def test_expected_files_present():
    rel = {p.relative_to(SAMPLES).as_posix() for p in _committed_models()}
    expected = {
        "lenet5_digits.onnx",
        "chains/a_conv_bn_gap.onnx",
        "chains/b_bias_add_sigmoid.onnx",
        "chains/c_mlp_gemm.onnx",
        "chains/d_cntk_matmul.onnx",
        "chains/e_activations.onnx",
        "chains/f_reshaped_weights.onnx",
        "chains/external/g_external.onnx",
        "chains/h_blocked.onnx",
    }
    assert expected <= rel
    assert (SAMPLES / "digits_calib.npz").is_file()
    assert (CHAINS / "external" / "g_external.onnx.data").is_file()


@pytest.mark.parametrize("path", _committed_models(),
                         ids=lambda p: p.relative_to(SAMPLES).as_posix())
def test_committed_model_checks_and_runs(path: Path):
    # The path form resolves external data relative to the model file.
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))  # loads external data from the model's folder
    onnx.checker.check_model(model, full_check=True)
    sess = _session(path)
    outs = sess.run(None, _feed(model))
    assert outs
    for out in outs:
        assert np.isfinite(out).all()
    trained = path.name == "lenet5_digits.onnx" or path.parent.name == "compact_cifar"  # real weights
    size_limit = 1 << 20 if trained else 200 << 10
    assert path.stat().st_size < size_limit


def test_external_data_model_really_is_external():
    path = CHAINS / "external" / "g_external.onnx"
    bare = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in bare.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert "conv2.weight" in external
    for t in bare.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}["location"]
            assert loc == "g_external.onnx.data"
    onnx.load_external_data_for_model(bare, str(path.parent))
    onnx.checker.check_model(bare, full_check=True)
    assert (CHAINS / "external" / "g_external.onnx.data").stat().st_size < 200 << 10


# --------------------------------------------------------------------------- chain builders
@pytest.fixture(scope="module")
def chain_mod():
    return _load_module("chain_cnns")


def _signature(model: onnx.ModelProto):
    return (
        [n.op_type for n in model.graph.node],
        sorted((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer),
        [(i.name, str(i.type)) for i in model.graph.input],
        [(o.name, str(o.type)) for o in model.graph.output],
        [(o.domain, o.version) for o in model.opset_import],
        model.ir_version,
    )


def test_chain_builders_match_committed_files(chain_mod):
    for name, build in chain_mod.MODELS.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        committed = onnx.load(chain_mod.model_path(name, str(CHAINS)))
        assert _signature(model) == _signature(committed), (
            f"sample_models/chains/{name} is stale; rerun python sample_models/chain_cnns.py")


def test_chain_conventions(chain_mod):
    opsets = {}
    for name, build in chain_mod.MODELS.items():
        model = build()
        opsets[name] = model.opset_import[0].version
        inp = model.graph.input[0]
        first = inp.type.tensor_type.shape.dim[0]
        if name == "d_cntk_matmul":
            assert inp.name == "Input3"
        else:
            assert inp.name == "input"
        if name in ("d_cntk_matmul", "g_external"):
            assert first.dim_value == 1
        else:
            assert first.dim_param == "N"
        # small feature maps / channel counts keep the tests fast
        for t in model.graph.initializer:
            if len(t.dims) == 4:
                assert t.dims[0] <= 16 and t.dims[1] <= 16
    assert opsets["d_cntk_matmul"] == 7
    assert 11 in opsets.values() and 17 in opsets.values()
    assert list(opsets.values()).count(13) >= 4


def test_chain_ops_covered(chain_mod):
    ops = {name: {n.op_type for n in build().graph.node} for name, build in chain_mod.MODELS.items()}
    assert {"Conv", "BatchNormalization", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"} <= ops["a_conv_bn_gap"]
    assert {"Add", "LeakyRelu", "AveragePool", "Mul", "Sigmoid"} <= ops["b_bias_add_sigmoid"]
    assert "Conv" not in ops["c_mlp_gemm"] and {"Gemm", "Tanh"} <= ops["c_mlp_gemm"]
    assert {"MatMul", "Add", "Reshape"} <= ops["d_cntk_matmul"] and "Gemm" not in ops["d_cntk_matmul"]
    assert {"Pad", "Clip", "HardSwish", "Elu", "Dropout", "Identity", "Cast", "LpPool", "PRelu",
            "Softplus", "Selu", "Erf"} <= ops["e_activations"]
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Transpose"} <= ops["f_reshaped_weights"]
    assert {"Softmax", "Transpose", "Reshape"} <= ops["h_blocked"]


def test_cntk_model_lists_initializers_as_inputs(chain_mod):
    model = chain_mod.chain_d_cntk_matmul()
    assert model.ir_version == 3
    names = {i.name for i in model.graph.input}
    assert {t.name for t in model.graph.initializer} <= names


def test_reshaped_weight_graph_matches_plain_conv(chain_mod):
    """f: the Reshape/Transpose-of-initializers weight path yields a valid OIHW weight."""
    model = chain_mod.chain_f_reshaped_weights()
    feed = _feed(model, batch=3)
    out = _session(model).run(None, feed)[0]
    assert out.shape == (3, 10)
    # Expose the transposed weight and check its shape.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(
        "conv1_weight_transpose", onnx.TensorProto.FLOAT, None))
    w = _session(probe).run(["conv1_weight_transpose"], feed)[0]
    assert w.shape == (8, 3, 3, 3)


def test_blocked_model_exposes_conv_output(chain_mod):
    model = chain_mod.chain_h_blocked()
    outs = {o.name for o in model.graph.output}
    assert outs == {"logits", "features"}
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer["features"].op_type == "Conv"


# --------------------------------------------------------------------------- LeNet-5 / digits
def test_lenet5_digits_accuracy():
    data = np.load(SAMPLES / "digits_calib.npz")
    x, y = data["input"], data["label"]
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 32, 32)
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert 500 <= x.shape[0] <= 700
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))
    assert (SAMPLES / "digits_calib.npz").stat().st_size < 1 << 20

    model = onnx.load(str(SAMPLES / "lenet5_digits.onnx"))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert model.opset_import[0].version == 13
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(convs) == 2 and len(gemms) == 3

    logits = _session(model).run(["logits"], {"input": x})[0]
    acc = float((logits.argmax(1) == y).mean())
    assert acc >= 0.95, acc


# --------------------------------------------------------------------------- VGG-16 / CIFAR
@pytest.fixture(scope="module")
def vgg_mod():
    return _load_module("vgg16_cifar")


@pytest.fixture(scope="module")
def vgg(vgg_mod):
    return vgg_mod.build_vgg16_cifar(seed=0)


def test_vgg16_structure_and_params(vgg_mod, vgg):
    onnx.checker.check_model(vgg, full_check=True)
    ops = [n.op_type for n in vgg.graph.node]
    assert ops.count("Conv") == 13
    assert ops.count("BatchNormalization") == 13
    assert ops.count("Relu") == 13
    assert ops.count("MaxPool") == 5
    assert ops[-2:] == ["Flatten", "Gemm"]
    assert vgg.opset_import[0].version == 13
    n_params = vgg_mod.count_params(vgg)
    assert 14.6e6 < n_params < 14.8e6, n_params
    inp = vgg.graph.input[0]
    assert inp.name == "input" and inp.type.tensor_type.shape.dim[0].dim_param == "N"
    assert [o.name for o in vgg.graph.output] == ["logits"]


def test_vgg16_output_is_sane(vgg):
    sess = _session(vgg)
    x = np.random.default_rng(123).standard_normal((4, 3, 32, 32)).astype(np.float32)
    out = sess.run(["logits"], {"input": x})[0]
    assert out.shape == (4, 10)
    assert np.isfinite(out).all()
    assert 0.1 < float(out.std()) < 10.0


def test_vgg16_fixed_batch_and_seed(vgg_mod):
    m = vgg_mod.build_vgg16_cifar(seed=1, batch=1, calib_batch=2)
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    out = _session(m).run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert out.shape == (1, 10) and np.isfinite(out).all()


COMPACT = sorted((SAMPLES / "compact_cifar").glob("*.onnx"))


def test_compact_cifar_models_are_committed():
    assert {p.stem for p in COMPACT} == {"squeezenet", "mobilenetv2", "shufflenetv2"}
    assert sum(p.stat().st_size for p in COMPACT) < 4 << 20


@pytest.mark.parametrize("path", COMPACT, ids=lambda p: p.stem)
def test_compact_cifar_model_prunes_to_half_validly(path: Path, tmp_path: Path):
    """Fire modules, inverted residuals with depthwise convolutions, channel split and shuffle: half the
    multiply-adds gives a valid model with the original's interface."""
    from onnxprune.calibration.collect import CalibrationSettings
    from onnxprune.compress import CompressOptions, compress
    from onnxprune.metrics import count_model
    from onnxprune.plan import Target

    rng = np.random.default_rng(0)
    data = tmp_path / "x.npz"
    np.savez(data, input=rng.standard_normal((24, 3, 32, 32)).astype(np.float32))
    options = CompressOptions(target=Target("flops", 0.5), holdout=0.0,
                              calibration=CalibrationSettings(max_positions=64))
    pruned, original = compress(path, data, options).model, onnx.load(str(path))
    onnx.checker.check_model(pruned, full_check=True)
    assert count_model(pruned).flops <= 0.55 * count_model(original).flops
    x = rng.standard_normal((5, 3, 32, 32)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for m in (original, pruned)]
    assert run[0].shape == run[1].shape == (5, 10) and np.isfinite(run[1]).all()
