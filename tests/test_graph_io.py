"""Loading, normalising and saving models."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxprune.errors import ModelError, UsageError
from onnxprune.graph.io import check_output_path, load_model, save_model
from onnxprune.graph.normalise import normalise, opset_of, static_shapes

from conftest import SAMPLES, random_feed, relative_error, run_model


def test_missing_model(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_missing_external_data_is_named(tmp_path):
    """A model saved with external data loads with it, and without its data file says which file is missing (every
    command loads models this way)."""
    model = onnx.load(str(SAMPLES / "lenet5_digits.onnx"))
    expected = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer]
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    loaded = load_model(path)
    for init, want in zip(loaded.graph.initializer, expected, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), want)
    (tmp_path / "ext.onnx.data").unlink()
    for external_data in (True, False):
        if external_data:
            with pytest.raises(ModelError, match="external data file .*ext.onnx.data.* is missing"):
                load_model(path)
        else:
            assert load_model(path, check=False, external_data=False).graph.node


def test_garbage_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelError):
        load_model(bad)


def test_truncated_model(tmp_path):
    src = (SAMPLES / "lenet5_digits.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(ModelError):
        load_model(cut)


def test_normalise_keeps_outputs_and_folds_weight_reshape(tmp_path):
    path = SAMPLES / "chains" / "f_reshaped_weights.onnx"
    model = load_model(path)
    norm = normalise(model)
    onnx.checker.check_model(norm, full_check=True)
    assert opset_of(norm) == opset_of(model)
    # the conv weight that reached the node through Reshape/Transpose is now an initializer
    inits = {i.name for i in norm.graph.initializer}
    conv_weights = [n.input[1] for n in norm.graph.node if n.op_type == "Conv"]
    assert conv_weights and all(w in inits for w in conv_weights)
    feed = random_feed(path, 4)
    assert relative_error(run_model(model, feed)[0], run_model(norm, feed)[0]) < 1e-6


def test_normalise_opset7_lists_initializers_as_inputs():
    model = load_model(SAMPLES / "chains" / "d_cntk_matmul.onnx")
    norm = normalise(model)
    assert norm.ir_version < 4
    listed = {i.name for i in norm.graph.input}
    assert all(i.name in listed for i in norm.graph.initializer)
    onnx.checker.check_model(norm, full_check=True)


def test_static_shapes_resolve_dynamic_batch():
    model = normalise(load_model(SAMPLES / "lenet5_digits.onnx"))
    shapes = static_shapes(model, {"input": (1, 1, 32, 32)})
    out = model.graph.output[0].name
    assert shapes[out] == (1, 10)


def test_external_data_roundtrip(tmp_path):
    model = load_model(SAMPLES / "chains" / "external" / "g_external.onnx")
    out = tmp_path / "copy.onnx"
    save_model(model, out, external_data=True)
    assert (tmp_path / "copy.onnx.data").exists()
    again = load_model(out)
    feed = random_feed(SAMPLES / "chains" / "external" / "g_external.onnx", 2)
    np.testing.assert_allclose(run_model(model, feed)[0], run_model(again, feed)[0], rtol=1e-6)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_external_data_save_keeps_the_model_and_works_from_the_output_folder(tmp_path, monkeypatch):
    model = load_model(SAMPLES / "lenet5_digits.onnx")
    before = model.SerializeToString()
    monkeypatch.chdir(tmp_path)  # onnx looks data file names up from the working folder
    save_model(model, tmp_path / "copy.onnx", external_data=True)
    assert model.SerializeToString() == before  # the weights went to the file, not out of the model
    again = load_model(tmp_path / "copy.onnx")
    assert [i.raw_data for i in again.graph.initializer] == [i.raw_data for i in model.graph.initializer]
    assert sorted(os.listdir(tmp_path)) == ["copy.onnx", "copy.onnx.data"]


def test_a_tensor_over_2_gib_is_refused_in_one_line():
    huge = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**29 + 1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2**29 + 1])],
                                   initializer=[huge])
    with pytest.raises(ModelError, match="initializer 'w' holds 2.0 GiB"):
        normalise(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


def test_save_is_atomic_on_failure(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(Exception):
        save_model("not a model", out)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_output_path_rules(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(UsageError, match="never overwrites"):
        check_output_path(model, model, force=True)
    with pytest.raises(UsageError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "o.onnx", model, force=False)
    existing = tmp_path / "o.onnx"
    existing.write_bytes(b"y")
    with pytest.raises(UsageError) as err:
        check_output_path(existing, model, force=False)
    assert "--force" in err.value.one_line()
    assert check_output_path(existing, model, force=True) == existing
