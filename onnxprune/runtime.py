"""ONNX Runtime sessions for calibration and verification."""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort


def create_session(model: onnx.ModelProto, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """A session on the named provider ('cpu', 'cuda', 'tensorrt'); ProviderError if it is not really active.

    Its idle threads sleep instead of spinning: calibration alternates ONNX Runtime calls with numpy
    work that needs the same cores.
    """
    from onnxprune.bench.providers import make_session, resolve_providers
    from onnxprune.graph.io import serialised, temporary_file

    spec = resolve_providers([provider], allow_fallback=False)[0]
    payload = serialised(model)
    if payload is None:  # over protobuf's 2 GB limit: onnxruntime reads it from a file with external data
        with temporary_file(model) as path:
            return make_session(path, spec, threads, spinning=False)
    return make_session(payload, spec, threads, spinning=False)


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The static batch size shared by the model's inputs, or None when the batch dimension is dynamic."""
    from onnxprune.graph.input_shapes import known_dim
    from onnxprune.graph.io import model_inputs

    sizes = set()
    for inp in model_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if dims and known_dim(dims[0]) is not None:
            sizes.add(known_dim(dims[0]))
        else:
            return None
    return sizes.pop() if len(sizes) == 1 else None


def cpu_cores() -> int:
    """CPU cores this process may use (the default intra-op thread count of the benchmarks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
