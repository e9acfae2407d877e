"""Execution providers: names, options, and sessions that really run where they were asked to.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even where CUDA libraries are missing,
logs an error when the session is created, and silently runs on CPU. So a session is always checked
with ``session.get_providers()`` before a figure is attributed to a provider.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from onnxprune.errors import ModelError, ProviderError, UsageError, first_line

__all__ = [
    "PROVIDER_ALIASES",
    "CPU",
    "ProviderSpec",
    "resolve_providers",
    "make_session",
    "open_session",
    "available_providers",
    "GPU_INSTALL_NOTE",
]

CPU = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

GPU_INSTALL_NOTE = (
    "install the GPU build: pip uninstall onnxruntime && pip install 'onnxprune[gpu]' "
    "(onnxruntime and onnxruntime-gpu must not be installed side by side), or pass --allow-fallback to run on CPU"
)


@dataclass(frozen=True)
class ProviderSpec:
    """One requested provider, resolved to what a session is created with.

    ``requested`` is the alias asked for (``cpu``, ``cuda``, ``tensorrt``); ``name`` the ORT provider that
    will be tried; ``chain`` the (provider, options) list handed to ``InferenceSession`` (TensorRT is
    backed by CUDA, and CPU takes the nodes the others do not support). ``fallback_reason`` is set when
    ``allow_fallback`` already replaced an unavailable provider by CPU at resolution time.
    """

    requested: str
    name: str
    chain: tuple = ()
    allow_fallback: bool = False
    fallback_reason: Optional[str] = None
    device_id: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.name != CPU

    def to_dict(self) -> dict:
        return {
            "requested": self.requested,
            "provider": self.name,
            "options": {name: dict(opts) for name, opts in self.chain},
            "allow_fallback": self.allow_fallback,
            "fallback_reason": self.fallback_reason,
            "device_id": self.device_id,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ProviderSpec":
        chain = tuple((name, dict(opts)) for name, opts in data["options"].items())
        return cls(
            requested=data["requested"],
            name=data["provider"],
            chain=chain,
            allow_fallback=data["allow_fallback"],
            fallback_reason=data.get("fallback_reason"),
            device_id=data.get("device_id", 0),
        )

    def cpu_fallback(self, reason: str) -> "ProviderSpec":
        return ProviderSpec(
            requested=self.requested,
            name=CPU,
            chain=((CPU, {}),),
            allow_fallback=self.allow_fallback,
            fallback_reason=reason,
            device_id=self.device_id,
        )


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _normalise_name(name: str) -> str:
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return key.lower()
    for alias, full in PROVIDER_ALIASES.items():
        if key.lower() == full.lower() or key.lower() == full.lower().replace("executionprovider", ""):
            return alias
    raise UsageError(
        f"unknown execution provider '{name}'.",
        note=f"choose from {', '.join(PROVIDER_ALIASES)}",
    )


def _unavailable(alias: str, available: Sequence[str]) -> str:
    return (
        f"Requested provider '{alias}' ({PROVIDER_ALIASES[alias]}) is not available; "
        f"available: {', '.join(available)}."
    )


def resolve_providers(
    names: Iterable[str],
    *,
    allow_fallback: bool = False,
    trt_fp16: bool = False,
    trt_cache_dir: Union[str, os.PathLike, None] = None,
    trt_workspace_gb: Optional[float] = None,
    device_id: int = 0,
) -> list[ProviderSpec]:
    """Map ``cpu|cuda|tensorrt`` to provider specs with their options, in order, without duplicates.

    Raises ProviderError when a provider is not in ``onnxruntime.get_available_providers()``, unless
    ``allow_fallback``, in which case that entry runs on CPU and records why.
    """
    if device_id < 0:
        raise UsageError(f"device id must be >= 0, got {device_id}.")
    if trt_workspace_gb is not None and trt_workspace_gb <= 0:
        raise UsageError(f"TensorRT workspace must be > 0 GB, got {trt_workspace_gb}.")
    aliases = list(dict.fromkeys(_normalise_name(n) for n in names))
    if not aliases:
        aliases = ["cpu"]
    available = available_providers()

    cuda_opts: dict[str, Any] = {"device_id": device_id}
    trt_opts: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": bool(trt_fp16)}
    if trt_cache_dir is not None:
        trt_opts["trt_engine_cache_enable"] = True
        trt_opts["trt_engine_cache_path"] = str(trt_cache_dir)
        trt_opts["trt_timing_cache_enable"] = True
        trt_opts["trt_timing_cache_path"] = str(trt_cache_dir)
    if trt_workspace_gb is not None:
        trt_opts["trt_max_workspace_size"] = int(trt_workspace_gb * 2**30)

    specs: list[ProviderSpec] = []
    for alias in aliases:
        name = PROVIDER_ALIASES[alias]
        if alias == "cpu":
            chain: tuple = ((CPU, {}),)
        elif alias == "cuda":
            chain = ((name, dict(cuda_opts)), (CPU, {}))
        else:
            chain = ((name, dict(trt_opts)), (PROVIDER_ALIASES["cuda"], dict(cuda_opts)), (CPU, {}))
        spec = ProviderSpec(alias, name, chain, allow_fallback, None, device_id)
        if name not in available:
            if not allow_fallback:
                raise ProviderError(_unavailable(alias, available), note=GPU_INSTALL_NOTE)
            spec = spec.cpu_fallback(f"{name} is not in this onnxruntime build")
        specs.append(spec)
    return specs


def _session_options(threads: Optional[int], spinning: bool = True, configure: Optional[Callable] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:  # the caller does numpy work between runs: idle ORT must hold neither the cores nor the memory
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # without the arena and memory pattern a run's buffers are freed when it ends (VGG-16 at 224×224, batch 32:
        # 4.7 GB peak instead of 8.1 GB kept from the second run on)
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; provider load failures are checked explicitly below
    if configure is not None:
        configure(options)
    return options


def make_session(model_path_or_bytes: Union[str, os.PathLike, bytes], providers: ProviderSpec, threads: Optional[int] = None,
                 spinning: bool = True):
    """Create an ``InferenceSession`` on ``providers`` and check it really runs there.

    With ``providers.allow_fallback``, a session that could not get the provider is re-created on CPU;
    read the provider used from ``session.get_providers()[0]``. Otherwise raises ProviderError.
    Raises ModelError when onnxruntime cannot load the model even on CPU.
    """
    return open_session(model_path_or_bytes, providers, threads, spinning)[0]


def open_session(model_path_or_bytes: Union[str, os.PathLike, bytes], providers: ProviderSpec, threads: Optional[int] = None,
                 spinning: bool = True, configure: Optional[Callable] = None):
    """Like ``make_session``, returning ``(session, fallback_reason)``; the reason is None when no fallback happened.

    ``configure`` is called on the ``SessionOptions`` last (e.g. to enable profiling)."""
    import onnxruntime as ort

    spec = providers
    model = model_path_or_bytes if isinstance(model_path_or_bytes, bytes) else str(model_path_or_bytes)
    names = [name for name, _ in spec.chain]
    options = [dict(opts) for _, opts in spec.chain]

    def cpu_session():
        try:
            return ort.InferenceSession(model, sess_options=_session_options(threads, spinning, configure), providers=[CPU])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several pybind types
            label = "the model" if isinstance(model, bytes) else f"'{model}'"
            raise ModelError(
                f"onnxruntime cannot load {label}: {first_line(exc)}",
                note="check the model with onnx.checker; it may use operators this onnxruntime does not implement",
            ) from None

    if spec.name == CPU:
        return cpu_session(), spec.fallback_reason

    failure: Optional[str] = None
    session = None
    try:
        session = ort.InferenceSession(model, sess_options=_session_options(threads, spinning, configure), providers=names, provider_options=options)
    except Exception as exc:  # noqa: BLE001
        failure = first_line(exc)
    if session is not None and spec.name in session.get_providers():
        return session, None

    if failure is None:
        active = session.get_providers() if session is not None else []
        failure = f"the session was created with {', '.join(active) or 'no provider'} instead"
    session = None
    fallback = cpu_session()  # raises ModelError if the model itself is the problem
    if not spec.allow_fallback:
        raise ProviderError(
            f"Requested provider '{spec.requested}' ({spec.name}) is listed by onnxruntime but could not be used: {failure}.",
            note="onnxruntime-gpu needs matching CUDA/cuDNN (and TensorRT) libraries on LD_LIBRARY_PATH; "
            "or pass --allow-fallback to run on CPU",
        )
    return fallback, f"{spec.name} could not be used: {failure}"
