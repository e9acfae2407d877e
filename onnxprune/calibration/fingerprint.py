"""Fingerprints (sha256, hex) that tell whether statistics were computed from this model and these samples."""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import onnx

from onnxprune.calibration.sources import CalibrationData


def model_fingerprint(model: onnx.ModelProto) -> str:
    """Hash of a model's opsets and graph, one part at a time (a model over 2 GB cannot be serialised whole)."""
    digest = hashlib.sha256()
    graph = model.graph
    for part in (model.opset_import, graph.input, graph.output, graph.node, graph.initializer):
        for item in part:
            _update(digest, item.SerializeToString())
    return digest.hexdigest()


def data_fingerprint(data: CalibrationData, indices: Iterable[int], batch_size: int) -> str:
    """Hash of the samples ``indices`` as the model is fed them (preprocessing included), whatever the batching."""
    digests = {spec.name: hashlib.sha256() for spec in data.inputs}
    kinds: dict[str, str] = {}
    for _, feed in data.batches(list(indices), batch_size):
        for name, array in feed.items():
            kinds[name] = f"{array.dtype.str}{array.shape[1:]}"
            digests[name].update(np.ascontiguousarray(array).tobytes())
    digest = hashlib.sha256()
    for name, part in digests.items():
        for chunk in (name, kinds.get(name, "")):
            _update(digest, chunk.encode())
        _update(digest, part.digest())
    return digest.hexdigest()


def indices_fingerprint(indices: np.ndarray) -> str:
    """Hash of a set of sample indices (the calibration split)."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def _update(digest: "hashlib._Hash", chunk: bytes) -> None:
    digest.update(len(chunk).to_bytes(8, "little"))
    digest.update(chunk)
