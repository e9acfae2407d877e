"""Predicted latency of a pruned model on an execution provider, from per-layer times measured beforehand.

Multiply-adds are a poor proxy for time on real backends: on a CPU with AVX-512, onnxruntime computes
convolutions in blocks of 16 channels (NCHWc), and a layer whose activations are large is bound by memory
traffic rather than arithmetic. So the latency budget is priced with measured times: the model is thinned
uniformly (every prunable group keeps the same share of its channels, e.g. 100 %, 75 %, 50 %, 25 %), each
copy is profiled on the provider (:mod:`onnxprune.bench.profile`), and each Conv/Gemm/MatMul gets a curve
of its time against its share of multiply-adds. A pruned model's latency is then predicted as the sum of
its layers' times at their shares (linear interpolation, through zero) plus everything else as measured
on the original.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import onnx

from onnxprune.analysis.model import Analysis, ChannelGroup
from onnxprune.bench.profile import KernelTimes, kernel_times
from onnxprune.bench.providers import ProviderSpec
from onnxprune.costs import CostModel
from onnxprune.metrics import ModelCounts, count_model

FRACTIONS = (1.0, 0.75, 0.5, 0.25)
ROUNDS = 3  # every copy is profiled once per round; a layer's time is its median over the rounds


@dataclass(frozen=True)
class LatencyTarget:
    """``--target-latency``: keep at most ``fraction`` of the original's latency on the calibration provider,
    measured at ``batch`` samples per run with ``threads`` intra-op threads (None: onnxruntime's default)."""

    fraction: float
    batch: int = 1
    threads: Optional[int] = None
    runs: int = 10


@dataclass(frozen=True)
class LatencyTable:
    """Per-layer time curves of one model on one provider at one batch size (milliseconds per run)."""

    provider: str
    batch: int
    total: float                                        # all kernels of the original, ms per run
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]]  # node -> (MAC shares ascending, ms)

    def time(self, node: str, share: float) -> float:
        """Predicted ms of ``node`` at ``share`` (0–1) of its original multiply-adds (0 for unknown nodes)."""
        if node not in self.curves:
            return 0.0
        shares, ms = self.curves[node]
        return float(np.interp(share, shares, ms))

    def to_dict(self) -> dict:
        return {"provider": self.provider, "batch": self.batch, "total_ms": round(self.total, 4),
                "layers": {n: {"mac_share": s.round(4).tolist(), "ms": m.round(4).tolist()}
                           for n, (s, m) in self.curves.items()}}


Rounding = Callable[[ChannelGroup, int], int]


def uniform_mask(analysis: Analysis, share: float, rounded: Optional[Rounding] = None) -> np.ndarray:
    """Kept-per-class mask where every prunable group keeps ``share`` of its channels (frozen ones always,
    at least one), each count rounded up by ``rounded(group, count)`` (e.g. to the allocation's step)."""
    kept = np.ones(analysis.n_classes, dtype=bool)
    for g in analysis.groups:
        if not g.prunable:
            continue
        k = max(int(np.ceil(share * g.size - 1e-9)), int(g.frozen.sum()), 1)
        k = rounded(g, k) if rounded is not None else k
        order = np.lexsort((np.arange(g.size), ~g.frozen))
        kept[g.classes[order[min(k, g.size):]]] = False
    return kept


def measure_latency(model: onnx.ModelProto, analysis: Analysis, feeds: Mapping[str, np.ndarray],
                    provider: ProviderSpec, *, threads: Optional[int] = None, runs: int = 20,
                    rounded: Optional[Rounding] = None, rounds: int = ROUNDS,
                    fractions: Sequence[float] = FRACTIONS,
                    progress: Optional[Callable[[int], None]] = None) -> LatencyTable:
    """Profile uniformly thinned copies of ``model`` on ``provider`` with ``feeds`` (channel counts rounded by
    ``rounded``, as the allocation will round them); the latency table."""
    from onnxprune.plan import PrunePlan
    from onnxprune.rewrite import apply_plan

    base = count_model(model).per_node
    copies = []
    for share in sorted(set(fractions) | {1.0}, reverse=True):
        kept = uniform_mask(analysis, share, rounded)
        variant = model if kept.all() else apply_plan(model, analysis, PrunePlan(kept, {}, []))
        copies.append((variant, base if kept.all() else count_model(variant).per_node))
    # rounds of all copies in turn, so that a burst of load on the machine skews one round, not one copy
    times: list[list[KernelTimes]] = [[] for _ in copies]
    for _ in range(rounds):
        for i, (variant, _) in enumerate(copies):
            times[i].append(kernel_times(variant, feeds, provider, threads=threads, runs=runs))
            if progress:
                progress(1)
    total = float(np.median([t.total for t in times[0]]))
    points: dict[str, list[tuple[float, float]]] = {}
    for (variant, macs), measured in zip(copies, times):
        for node in measured[0].per_node:
            if node in base and base[node][1] > 0 and node in macs:
                ms = float(np.median([t.per_node[node] for t in measured]))
                points.setdefault(node, []).append((macs[node][1] / base[node][1], ms))
    curves = {}
    for node, pts in points.items():
        by_share: dict[float, float] = {}
        for share, ms in pts:
            by_share.setdefault(round(share, 9), ms)  # copies where the layer did not change repeat a share
        shares = np.array([0.0, *sorted(by_share)])
        ms = np.array([0.0, *(by_share[s] for s in shares[1:])])
        # timing noise must not make a thinner layer look slower than a wider one
        curves[node] = (shares, np.minimum.accumulate(ms[::-1])[::-1])
    return LatencyTable(provider.requested, int(next(iter(feeds.values())).shape[0]) if feeds else 1, total, curves)


class LatencyCost(CostModel):
    """Predicted latency (ms per run) under channel removal: each Conv/Gemm/MatMul term costs its measured
    time at its current share of multiply-adds; the rest of the model costs what it did in the original."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, counts: ModelCounts, table: LatencyTable):
        self.table = table
        super().__init__(model, analysis, counts, "flops")
        self.kind, self.before = "latency", table.total

    def _value(self, t: int, dims: Sequence[float]) -> float:
        return self.table.time(self.term_nodes[t], float(np.prod(dims)) / float(np.prod(self._orig[t])))
