"""ONNX Runtime sessions for calibration and verification."""
from __future__ import annotations

import onnx
import onnxruntime as ort


def create_session(model: onnx.ModelProto, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """A session on the named provider ('cpu', 'cuda', 'tensorrt'); ProviderError if it is not really active."""
    from onnxprune.bench.providers import make_session, resolve_providers

    spec = resolve_providers([provider], allow_fallback=False)[0]
    return make_session(model.SerializeToString(), spec, threads)


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The static batch size shared by the model's inputs, or None when the batch dimension is dynamic."""
    from onnxprune.graph.io import model_inputs

    sizes = set()
    for inp in model_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            sizes.add(int(dims[0].dim_value))
        else:
            return None
    return sizes.pop() if len(sizes) == 1 else None
