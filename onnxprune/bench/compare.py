"""The original and the pruned model measured with the same settings: what ``compress --bench`` reports."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from onnxprune.bench.measure import DEFAULT_ROUNDS, DEFAULT_RUNS, benchmark_models
from onnxprune.bench.results import BenchResult, RunResult, to_document

__all__ = ["BenchSettings", "Comparison", "compare_models"]


@dataclass(frozen=True)
class BenchSettings:
    """Batch sizes, timed and warm-up runs per configuration, interleaved rounds the timed runs are split
    into, intra-op threads (None: onnxruntime's default)."""

    batches: tuple[int, ...] = (1, 8)
    runs: int = DEFAULT_RUNS
    warmup: int = 10
    rounds: int = DEFAULT_ROUNDS
    threads: Optional[int] = None


@dataclass
class Comparison:
    """Both models' ``BenchResult`` on one provider; ``ratios`` compares them batch by batch."""

    original: BenchResult
    pruned: BenchResult
    provider: str
    settings: BenchSettings

    def pairs(self) -> list[tuple[RunResult, Optional[RunResult]]]:
        """(original, pruned) runs at each batch size, in the order measured."""
        return [(run, self.pruned.find(run.provider_requested, run.batch)) for run in self.original.runs]

    def ratios(self) -> list[dict]:
        """Per batch: p50 latency before/after in ms and their ratio pruned/original (None when skipped)."""
        rows = []
        for before, after in self.pairs():
            a, b = before.p50_ms, after.p50_ms if after is not None else None
            rows.append({
                "batch": before.batch,
                "p50_ms_before": a,
                "p50_ms_after": b,
                "latency_ratio": b / a if a and b is not None else None,
                "note": before.note,
            })
        return rows

    def to_dict(self) -> dict:
        """The ``onnxprune bench --json`` document of both models plus ``ratios``."""
        settings = {
            "providers": [self.provider],
            "batches": list(self.settings.batches),
            "runs": self.settings.runs,
            "warmup_runs": self.settings.warmup,
            "rounds": self.settings.rounds,
            "threads": self.settings.threads,
            "inter_op_threads": 1,
        }
        document = to_document([self.original, self.pruned], settings)
        document["ratios"] = self.ratios()
        return document


def compare_models(original: str | os.PathLike, pruned: str | os.PathLike, *, provider: str = "cpu",
                   settings: BenchSettings = BenchSettings(),
                   progress: Optional[Callable[[str], None]] = None,
                   shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Comparison:
    """Benchmark ``original`` and ``pruned`` (files) on ``provider`` with ``settings``; ``shapes`` sizes the inputs'
    dynamic dims besides the batch (e.g. the calibration data's height and width)."""
    results = benchmark_models([original, pruned], providers=[provider], batches=settings.batches, runs=settings.runs,
                               warmup=settings.warmup, threads=settings.threads, rounds=settings.rounds,
                               progress=progress, shapes=shapes)
    return Comparison(results[0], results[1], provider, settings)
