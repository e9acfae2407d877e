"""ONNX Runtime sessions for calibration and verification."""
from __future__ import annotations

import onnx
import onnxruntime as ort

from onnxprune.errors import ModelError, ProviderError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def create_session(model: onnx.ModelProto, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """A session on the named provider ('cpu', 'cuda', 'tensorrt'); ProviderError if it is not really active."""
    name = PROVIDERS.get(provider.lower())
    if name is None:
        raise ProviderError(f"unknown provider '{provider}'; choose one of {', '.join(PROVIDERS)}.")
    available = ort.get_available_providers()
    if name not in available:
        raise ProviderError(f"requested provider '{provider}' ({name}) is not available; available: {', '.join(available)}.",
                            note="install the GPU build with pip install 'onnxprune[gpu]' after uninstalling onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load the model: {str(exc).strip().splitlines()[0][:300]}") from None
    if session.get_providers()[0] != name:
        raise ProviderError(f"ONNX Runtime did not activate {name} (it fell back to {session.get_providers()[0]}).")
    return session


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
