"""Per-layer kernel times of a model on an execution provider, read from onnxruntime's profiler.

onnxruntime rewrites the graph before it runs it (fusions, the CPU's NCHWc layout), so a profiled kernel is
named after the node it came from, after that node's output (``<tensor>_nchwc``), or after a fused chain.
Each kernel is attributed to the Conv/ConvTranspose/Gemm/MatMul it computes: by node name, else by walking
back from the tensor it writes through element-wise ops (a fused Relu or residual Add) to a node of that
kind whose weight has the kernel's weight shape. A re-order out of the blocked layout whose output only
convolutions read (they read fewer input channels than one block, from the plain layout) is part of their cost:
it exists because of their channel count, so it is attributed to them. Every other kernel that writes a tensor of
the model (element-wise ops, resizing, pooling, the other re-orders, each by the tensor it writes or, into the
blocked layout, reads) is summed per tensor, so that its time can follow that tensor's channels; what is left
(kernels onnxruntime made of several nodes, or named after none) is ``other``.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.bench.providers import CPU, ProviderSpec, open_session, resolve_providers
from onnxprune.errors import UsageError
from onnxprune.residual import tensor_readers

COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# ops onnxruntime fuses into the kernel of the Conv/Gemm before them
_FUSABLE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "Tanh", "Add", "Sum", "BatchNormalization",
            "Mul", "Identity", "HardSwish"}


@dataclass(frozen=True)
class KernelTimes:
    """Milliseconds per run (each kernel's median over the runs): ``per_node`` for each Conv/ConvTranspose/Gemm/MatMul node name,
    ``per_tensor`` for the other kernels by the model tensor they write (or, a re-order into the blocked layout,
    read), ``other`` for the rest, ``total`` for all kernels together."""

    per_node: dict[str, float]
    other: float
    per_tensor: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.per_node.values()) + sum(self.per_tensor.values()) + self.other)


def kernel_times(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], provider: ProviderSpec, *,
                 threads: Optional[int] = None, runs: int = 20, warmup: int = 5) -> KernelTimes:
    """Profile ``runs`` calls of ``session.run(feeds)`` after ``warmup`` untimed ones; kernel times per layer."""
    events, reorders = profile_session(model, feeds, provider, threads=threads, calls=warmup + runs)
    return attribute(model, _timed_kernels(events, runs), runs, reorders)


def profile_session(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], provider: ProviderSpec, *,
                    threads: Optional[int] = None, calls: int = 1) -> tuple[list[dict], dict[str, str]]:
    """onnxruntime's profiler events (its JSON) of ``calls`` calls of ``session.run(feeds)`` on ``provider``, and the
    re-orders of the blocked layout in the graph it ran: node name -> the model's tensor it writes (out of the
    layout) or reads (into it); empty where the provider does not use that layout."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-profile-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"

        def profiling(options) -> None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "run")
            if provider.name == CPU:   # the only provider with the blocked layout
                options.optimized_model_filepath = str(optimized)
                options.log_severity_level = 3   # saving a blocked-layout graph warns that it fits this machine only

        session, _ = open_session(model.SerializeToString(), provider, threads, configure=profiling)
        for _ in range(calls):
            session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
        ran = onnx.load(str(optimized), load_external_data=False) if optimized.exists() else None
    reorders = {} if ran is None else {n.name: n.output[0] if n.op_type == "ReorderOutput" else n.input[0]
                                        for n in ran.graph.node
                                        if n.op_type in ("ReorderOutput", "ReorderInput") and n.domain.endswith("nchwc")}
    return events, reorders


def op_type_times(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], provider: ProviderSpec, *,
                  threads: Optional[int] = None, runs: int = 20, warmup: int = 5) -> dict[str, float]:
    """Kernel milliseconds per run by the op type onnxruntime ran (after its fusions and layout rewrite, e.g.
    ``ReorderOutput``), each kernel's mean over ``runs`` calls after ``warmup`` untimed ones."""
    events, _ = profile_session(model, feeds, provider, threads=threads, calls=warmup + runs)
    times: dict[str, float] = {}
    for e in _timed_kernels(events, runs):
        op = e.get("args", {}).get("op_name", "?")
        times[op] = times.get(op, 0.0) + e["dur"] / 1000.0 / runs
    return times


def _timed_kernels(events: list[dict], runs: int) -> list[dict]:
    """Kernel events of the last ``runs`` runs (the warm-up runs come first)."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    since = starts[-runs] if len(starts) >= runs else 0
    return [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= since]


def attribute(model: onnx.ModelProto, kernels: list[dict], runs: int,
              reorders: Optional[Mapping[str, str]] = None) -> KernelTimes:
    """Time per run of profiled kernel events (onnxruntime's JSON, ``dur`` in µs) per compute node and per tensor.

    A kernel's time is the median of its runs (times the calls per run), so one slow run does not count.
    ``reorders`` (from :func:`profile_session`): re-order node -> the tensor it writes or reads; a re-order out of
    the blocked layout that only compute nodes read (not a graph output) is split evenly among them."""
    nodes = {n.name: n for n in model.graph.node}
    producer = {out: n for n in model.graph.node for out in n.output}
    readers = tensor_readers(model)
    outputs = {o.name for o in model.graph.output}   # a re-order to a graph output is needed anyway
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    per_node = {n.name: 0.0 for n in model.graph.node if n.op_type in COMPUTE_OPS}
    per_tensor: dict[str, float] = {}
    other = 0.0
    durations: dict[str, list[float]] = {}
    first: dict[str, dict] = {}
    for e in kernels:
        durations.setdefault(e["name"], []).append(e["dur"] / 1000.0)
        first.setdefault(e["name"], e)
    for name, ms in durations.items():
        per_run = float(np.median(ms)) * len(ms) / max(runs, 1)
        tensor = (reorders or {}).get(name.removesuffix("_kernel_time"))
        out_of_layout = tensor is not None and first[name].get("args", {}).get("op_name") != "ReorderInput"
        reading = readers.get(tensor, []) if out_of_layout and tensor not in outputs else []
        if reading and all(r.op_type in COMPUTE_OPS for r in reading):
            for r in reading:
                per_node[r.name] += per_run / len(reading)
            continue
        node = _source(first[name], nodes, producer, weights)
        if node is not None:
            per_node[node] += per_run
            continue
        tensor = tensor if tensor is not None else _written(first[name], nodes, producer)
        if tensor is None:
            other += per_run
        else:
            per_tensor[tensor] = per_tensor.get(tensor, 0.0) + per_run
    return KernelTimes(per_node, other, per_tensor)


def _written(event: dict, nodes: Mapping[str, onnx.NodeProto], producer: Mapping[str, onnx.NodeProto]) -> Optional[str]:
    """The model tensor a kernel that is no compute node's writes: its node's first output, or the tensor it is
    named after (the blocked layout's ``<tensor>_nchwc``); None for a kernel named after neither."""
    name = _named_after(event)
    if name in nodes:
        return nodes[name].output[0] if nodes[name].output else None
    return name if name in producer else None


def _named_after(event: dict) -> str:
    """What a kernel event is named after: a node, a tensor (the CPU's blocked layout: ``<tensor>_nchwc``) or a
    fusion (``<node>/<suffix>``)."""
    return event["name"].removesuffix("_kernel_time").removesuffix("_nchwc")


def _source(event: dict, nodes: Mapping[str, onnx.NodeProto], producer: Mapping[str, onnx.NodeProto],
            weights: Mapping[str, tuple]) -> Optional[str]:
    """The compute node a kernel event belongs to, or None."""
    name = _named_after(event)
    for cut in [len(name)] + [i for i in range(len(name) - 1, 0, -1) if name[i] == "/"]:
        prefix = name[:cut]  # a node's name, or its name before a fusion's "/MatMulAddFusion"-like suffix
        if prefix in nodes:
            return prefix if nodes[prefix].op_type in COMPUTE_OPS else None
    if name not in producer:
        return None
    candidates = _compute_sources(producer[name], producer)
    if len(candidates) < 2:
        return candidates[0].name if candidates else None
    shapes = event.get("args", {}).get("input_type_shape") or []
    weight = tuple(next(iter(shapes[1].values()))) if len(shapes) > 1 and isinstance(shapes[1], dict) else ()

    def likeness(c: onnx.NodeProto) -> int:  # the same weight shape, else the same kernel size
        have = weights.get(c.input[1], ()) if len(c.input) > 1 else ()
        return 2 if have == weight else int(have[2:] == weight[2:] and len(have) > 2)
    return max(candidates, key=likeness).name


def _compute_sources(node: onnx.NodeProto, producer: Mapping[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Compute nodes reached from ``node`` walking back through fusable element-wise ops, nearest first."""
    found, frontier, seen = [], [node], set()
    while frontier:
        n = frontier.pop(0)
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type in COMPUTE_OPS:
            found.append(n)
        elif n.op_type in _FUSABLE:
            frontier.extend(producer[i] for i in n.input if i in producer)
    return found


def cpu_channel_block() -> int:
    """The channel block of onnxruntime's NCHWc convolutions on this CPU (16 with AVX-512, 8 with AVX2), or 1
    where the CPU provider does not use that layout; ``ONNXPRUNE_CPU_BLOCK`` sets it instead (the block of the
    CPU the model will run on, when that is another machine; 1 for exact counts)."""
    forced = os.environ.get("ONNXPRUNE_CPU_BLOCK", "").strip()
    if not forced:
        return _probed_channel_block()
    if not forced.isdigit() or int(forced) < 1:
        raise UsageError(f"ONNXPRUNE_CPU_BLOCK must be a whole number of channels >= 1, not {forced!r}")
    return int(forced)


@functools.lru_cache(maxsize=None)
def _probed_channel_block() -> int:
    """The block read from the graph onnxruntime optimises: it pads a convolution's output channels up to the
    block, so a probe convolution with one output channel gets a weight with ``block`` of them."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="probe", pads=[1, 1, 1, 1])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
        [numpy_helper.from_array(np.ones((1, 3, 3, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with tempfile.TemporaryDirectory(prefix="onnxprune-probe-") as tmp:
        path = Path(tmp) / "optimized.onnx"

        def keep_optimized(options) -> None:
            options.optimized_model_filepath = str(path)

        open_session(model.SerializeToString(), resolve_providers(["cpu"])[0], 1, configure=keep_optimized)
        optimized = onnx.load(str(path))
    weights = {i.name: tuple(i.dims) for i in optimized.graph.initializer}
    blocked = [n for n in optimized.graph.node if n.op_type == "Conv" and n.domain.endswith("nchwc")]
    return int(weights[blocked[0].input[1]][0]) if blocked else 1
