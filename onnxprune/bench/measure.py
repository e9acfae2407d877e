"""``benchmark``: latency, throughput and memory of ONNX models on ONNX Runtime execution providers.

For every (model, provider, batch):

1. inputs are prepared beforehand (random, or the given feeds cut/repeated to the batch);
2. a session is created (``intra_op_num_threads`` = ``threads`` or ORT's default, ``inter_op_num_threads`` = 1,
   sequential execution, all graph optimisations) and checked to really run on the provider;
3. ``warmup`` runs are made and not timed;
4. each timed run is ``time.perf_counter_ns`` around ``session.run`` alone (garbage collection paused),
   ``runs`` times or until ``seconds`` have passed, split into ``rounds`` (below); p50/p90/p99 are reported
   over all runs of all rounds (no trimming);
5. memory: peak RSS increase of the process (CPU; ``/proc/self/status`` VmHWM, reset before the session
   is created) and GPU used-memory increase (``pynvml`` or ``nvidia-smi``) for GPU providers.

Each configuration runs in a fresh worker process (``isolate=True``) so process-wide peaks do not mix.
The timed runs are split into rounds, interleaved: round 1 of every configuration, then round 2 of every
configuration, ... (each round a fresh process with its own warm-up), so that a machine whose speed drifts
(a shared VM, thermal throttling) slows the models of a comparison alike instead of the one measured last.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from onnxprune.bench.inputs import (
    NotApplicable,
    check_overrides,
    feeds_for_batch,
    input_specs,
    parse_shape_overrides,
    resolve_shapes,
)
from onnxprune.bench.providers import ProviderSpec, resolve_providers
from onnxprune.bench.results import BenchResult, LatencyStats, MemoryStats, RunResult
from onnxprune.errors import DataError, ModelError, OnnxPruneError, ProviderError, UsageError
from onnxprune.graph.io import external_data_files, load_external_data, load_model, require_external_data

__all__ = ["benchmark", "benchmark_models", "model_file_bytes", "DEFAULT_RUNS", "DEFAULT_ROUNDS"]

DEFAULT_RUNS = 50
DEFAULT_ROUNDS = 3
_JOB_IDS = itertools.count()
PathLike = Union[str, os.PathLike]
ShapesArg = Union[Mapping[str, Sequence[int]], Iterable[str], None]
ProvidersArg = Union[Sequence[Union[str, ProviderSpec]], str, ProviderSpec]


@dataclass
class _Plan:
    path: Path
    specs: list
    result: BenchResult
    label: str = ""
    shapes: dict = field(default_factory=dict)  # batch -> {name: shape} or NotApplicable note (str)


def _load_model(path: Path):
    return load_model(path, check=False, external_data=False)


def model_file_bytes(path: PathLike, model=None) -> int:
    """Size of the model file plus its external data files, in bytes."""
    path = Path(path)
    model = model if model is not None else _load_model(path)
    require_external_data(model, path)
    return path.stat().st_size + sum(extra.stat().st_size for extra in external_data_files(model, path.parent))


def _providers(providers: ProvidersArg) -> list[ProviderSpec]:
    if isinstance(providers, (str, ProviderSpec)):
        providers = [providers]
    specs = [p for p in providers if isinstance(p, ProviderSpec)]
    names = [p for p in providers if not isinstance(p, ProviderSpec)]
    if names and specs:
        raise UsageError("give providers either as names or as ProviderSpec objects from resolve_providers, not both.")
    return specs or resolve_providers(names or ["cpu"])


def _check_options(batches, runs, seconds, warmup, threads, rounds) -> tuple[list[int], Optional[int], Optional[float]]:
    if runs is not None and seconds is not None:
        raise UsageError("give either a number of runs or a time budget in seconds, not both.")
    if seconds is None and runs is None:
        runs = DEFAULT_RUNS
    if runs is not None and int(runs) < 1:
        raise UsageError(f"runs must be >= 1, got {runs}.")
    if seconds is not None and not float(seconds) > 0:
        raise UsageError(f"seconds must be > 0, got {seconds}.")
    if int(rounds) < 1:
        raise UsageError(f"rounds must be >= 1, got {rounds}.")
    if int(warmup) < 0:
        raise UsageError(f"warm-up runs must be >= 0, got {warmup}.")
    if threads is not None and int(threads) < 0:
        raise UsageError(f"threads must be >= 0 (0: onnxruntime's default), got {threads}.")
    if isinstance(batches, int):
        batches = [batches]
    batch_list = list(dict.fromkeys(int(b) for b in batches))
    if not batch_list:
        raise UsageError("give at least one batch size.")
    if any(b < 1 for b in batch_list):
        raise UsageError(f"batch sizes must be >= 1, got {batch_list}.")
    return batch_list, (None if runs is None else int(runs)), (None if seconds is None else float(seconds))


def _overrides(shapes: ShapesArg) -> dict[str, tuple[int, ...]]:
    if shapes is None:
        return {}
    if isinstance(shapes, str):
        return parse_shape_overrides([shapes])
    if isinstance(shapes, Mapping):
        out = {}
        for name, dims in shapes.items():
            dims = tuple(int(d) for d in dims)
            if any(d <= 0 for d in dims):
                raise UsageError(f"shape of input '{name}' has a dimension <= 0: {dims}.")
            out[str(name)] = dims
        return out
    return parse_shape_overrides(list(shapes))


def _prepare(path: PathLike, batches, overrides, feeds) -> _Plan:
    from onnxprune.metrics import count_model, count_params

    path = Path(path)
    model = _load_model(path)
    label = f"'{path.name}'"
    size = model_file_bytes(path, model)
    notes = []
    at = {name: (1, *dims[1:]) if dims else dims for name, dims in overrides.items()}  # counted per sample
    try:
        try:
            counts = count_model(model, at)
        except ValueError:
            if not external_data_files(model, path.parent):
                raise
            load_external_data(model, path)   # shape arithmetic may read small tensors kept there: try again
            counts = count_model(model, at)
        params, macs = counts.params, counts.flops
    except (ValueError, UsageError) as exc:
        params, macs = count_params(model), None
        notes.append(f"multiply-adds not counted: {exc}")
    specs = input_specs(model)
    del model
    check_overrides(specs, overrides, label)
    plan = _Plan(path, specs, BenchResult(str(path), size, params, macs, notes=notes), label)
    for batch in batches:
        try:
            if feeds is not None:
                plan.shapes[batch] = feeds_for_batch(feeds, specs, batch, label)
            else:
                plan.shapes[batch] = resolve_shapes(specs, batch, overrides, label)
        except NotApplicable as exc:
            plan.shapes[batch] = str(exc)
    return plan


def _raise_from_worker(error: dict, stderr: str) -> None:
    kinds = {cls.__name__: cls for cls in (ProviderError, ModelError, UsageError, DataError, OnnxPruneError)}
    cls = kinds.get(error.get("type"), OnnxPruneError)
    note = error.get("note")
    if cls is ProviderError:
        hint = next((line.strip() for line in stderr.splitlines() if "error" in line.lower()), None)
        if hint:
            note = f"{note}; onnxruntime said: {hint[:240]}" if note else f"onnxruntime said: {hint[:240]}"
    raise cls(error.get("message", "the benchmark worker failed."), note=note)


def _run_job(job: dict, isolate: bool) -> dict:
    if not isolate:
        from onnxprune.bench.worker import run_job

        return run_job(job)
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune.bench.worker"],
        input=json.dumps(job), capture_output=True, text=True, env=env,
    )
    try:
        with open(job["result_path"], encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
        raise RuntimeError(
            f"the benchmark worker exited with status {proc.returncode} and no result"
            + (f": {tail[0]}" if tail else "")
            + f"\n{proc.stderr}"
        ) from None
    if result.get("ok"):
        return result
    if "error" in result:
        _raise_from_worker(result["error"], proc.stderr)
    raise RuntimeError(f"the benchmark worker failed:\n{result.get('bug', '')}\n{proc.stderr}")


def _base(plan: _Plan, spec: ProviderSpec, batch: int, *, warmup: int, threads, isolate: bool) -> RunResult:
    """The result of one configuration before it is measured (``skipped`` when its shapes do not apply)."""
    base = RunResult(provider_requested=spec.requested, provider=spec.name, batch=batch, threads=threads,
                     warmup_runs=warmup, fallback=spec.fallback_reason is not None)
    shapes = plan.shapes[batch]
    if isinstance(shapes, str):
        base.status = "skipped"
        base.note = f"not applicable, {shapes}"
        base.memory = MemoryStats(isolated=isolate)
    return base


def _job(plan: _Plan, spec: ProviderSpec, batch: int, *, warmup: int, threads, seed: int, tmp: Path) -> dict:
    """The worker's job for one configuration (its inputs saved under ``tmp``), without runs or seconds."""
    shapes = plan.shapes[batch]
    index = next(_JOB_IDS)
    job = {
        "model": str(plan.path),
        "provider": spec.to_dict(),
        "threads": threads,
        "batch": batch,
        "warmup": warmup,
        "seed": seed,
        "result_path": str(tmp / f"result-{index}.json"),
    }
    if shapes and isinstance(next(iter(shapes.values())), np.ndarray):
        feeds_path = tmp / f"feeds-{index}.npz"
        names = list(shapes)
        np.savez(feeds_path, *[shapes[n] for n in names])
        job.update(feeds_path=str(feeds_path), feed_names=names)
    else:
        job.update(shapes={n: list(s) for n, s in shapes.items()}, dtypes={s.name: s.dtype for s in plan.specs})
    return job


def _round_shares(rounds: int, runs: Optional[int], seconds: Optional[float]) -> list[dict]:
    """What each round times: ``runs`` split as evenly as possible (no empty round), or ``seconds / rounds``."""
    if runs is not None:
        rounds = min(rounds, runs)
        return [{"runs": runs // rounds + (r < runs % rounds), "seconds": None} for r in range(rounds)]
    return [{"runs": None, "seconds": seconds / rounds} for _ in range(rounds)]


def _most(values: Iterable[Optional[int]]) -> Optional[int]:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _finish(base: RunResult, spec: ProviderSpec, plan: _Plan, outs: list[dict], isolate: bool) -> RunResult:
    """Fill ``base`` from the worker outputs of its rounds: latency over the runs of all rounds pooled,
    memory as the largest increase of any round, session creation time as the median."""
    first = outs[0]
    reason = first.get("fallback_reason")
    base.provider = first["provider"]
    base.providers_active = first["providers_active"]
    base.fallback = base.provider != spec.name or spec.fallback_reason is not None or reason is not None
    if base.fallback:
        base.note = f"{spec.requested} requested; ran on {base.provider}" + (f" ({reason})" if reason else "")
    base.input_shapes = {n: list(getattr(s, "shape", s)) for n, s in plan.shapes[base.batch].items()}
    base.rounds = len(outs)
    base.session_create_ms = float(np.median([o["session_create_ms"] for o in outs]))
    samples = [t for o in outs for t in o["samples_ns"]]
    base.latency = LatencyStats.from_ns(samples) if samples else None
    base.memory = MemoryStats(
        host_session_bytes=_most(o["host_session_bytes"] for o in outs),
        host_peak_bytes=_most(o["host_peak_bytes"] for o in outs),
        host_source=first["host_source"],
        device_bytes=_most(o["device_bytes"] for o in outs),
        device_source=first["device_source"],
        isolated=isolate,
    )
    return base


def benchmark_models(
    model_paths: Sequence[PathLike],
    *,
    providers: ProvidersArg = ("cpu",),
    batches: Union[int, Sequence[int]] = (1,),
    runs: Optional[int] = None,
    seconds: Optional[float] = None,
    warmup: int = 10,
    threads: Optional[int] = None,
    shapes: ShapesArg = None,
    feeds: Optional[Mapping[str, np.ndarray]] = None,
    isolate: bool = True,
    seed: int = 0,
    rounds: int = DEFAULT_ROUNDS,
    progress: Optional[Callable[[str], None]] = None,
) -> list[BenchResult]:
    """Benchmark several models with the same settings; every model is checked before any is measured.

    See ``benchmark`` for the arguments; ``progress`` receives one line per configuration.
    """
    batch_list, runs, seconds = _check_options(batches, runs, seconds, warmup, threads, rounds)
    threads = None if not threads else int(threads)
    specs = _providers(providers)
    overrides = _overrides(shapes)
    if feeds is not None and overrides:
        raise UsageError("give either feeds or shape overrides, not both: feeds fix the shapes.")
    if feeds is not None:
        feeds = {str(k): np.asarray(v) for k, v in feeds.items()}
    plans = [_prepare(p, batch_list, overrides, feeds) for p in model_paths]
    if not plans:
        raise UsageError("give at least one model.")

    configs = [(plan, spec, batch) for plan in plans for spec in specs for batch in batch_list]
    bases = [_base(*c, warmup=int(warmup), threads=threads, isolate=isolate) for c in configs]
    measured = [i for i, base in enumerate(bases) if base.ok]
    shares = _round_shares(int(rounds), runs, seconds)
    outs: dict[int, list[dict]] = {i: [] for i in measured}
    done = 0
    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-") as tmp:
        jobs = {i: _job(*configs[i], warmup=int(warmup), threads=threads, seed=seed, tmp=Path(tmp)) for i in measured}
        for number, share in enumerate(shares, 1):
            for i in measured:
                plan, spec, batch = configs[i]
                done += 1
                if progress is not None:
                    of = f", round {number}/{len(shares)}" if len(shares) > 1 else ""
                    progress(f"[{done}/{len(measured) * len(shares)}] {plan.path.name} on {spec.requested}, batch {batch}{of}")
                outs[i].append(_run_job({**jobs[i], **share}, isolate))
    for i, (plan, spec, _) in enumerate(configs):
        plan.result.runs.append(_finish(bases[i], spec, plan, outs[i], isolate) if i in outs else bases[i])
    return [plan.result for plan in plans]


def benchmark(
    model_path: PathLike,
    *,
    providers: ProvidersArg = ("cpu",),
    batches: Union[int, Sequence[int]] = (1,),
    runs: Optional[int] = None,
    seconds: Optional[float] = None,
    warmup: int = 10,
    threads: Optional[int] = None,
    shapes: ShapesArg = None,
    feeds: Optional[Mapping[str, np.ndarray]] = None,
    isolate: bool = True,
    seed: int = 0,
    rounds: int = DEFAULT_ROUNDS,
    progress: Optional[Callable[[str], None]] = None,
) -> BenchResult:
    """Measure one model on each provider at each batch size; one ``RunResult`` per (provider, batch).

    providers: names (``cpu``, ``cuda``, ``tensorrt``) or ``ProviderSpec`` objects from ``resolve_providers``
        (which carry ``allow_fallback`` and the TensorRT options).
    batches: batch sizes; each replaces the first dim of inputs whose first dim is dynamic. A model with a
        fixed batch dim gets a ``skipped`` result (note ``fixed batch N``) for any other batch size.
    runs / seconds: timed runs per configuration, or a time budget per configuration (not both;
        default 50 runs). warmup: untimed runs before timing.
    threads: ``intra_op_num_threads`` (None or 0: onnxruntime's default); inter-op threads are always 1.
    shapes: sizes of dynamic dims, ``{"input": (1, 3, 224, 224)}`` or ``["input:1x3x224x224"]``.
    feeds: input arrays (e.g. calibration samples) used instead of random inputs, cut or repeated along
        axis 0 to each batch size.
    isolate: measure each configuration in a fresh process (False: in this process; memory figures are then
        affected by what this process did before).
    rounds: split the timed runs (or seconds) of every configuration into this many rounds, each a fresh
        process with its own warm-up; round 1 of every configuration runs before round 2 of any, so a
        machine that slows down for a while slows every model alike. Latency percentiles are over the
        runs of all rounds together.
    """
    return benchmark_models(
        [model_path], providers=providers, batches=batches, runs=runs, seconds=seconds, warmup=warmup,
        threads=threads, shapes=shapes, feeds=feeds, isolate=isolate, seed=seed, rounds=rounds, progress=progress,
    )[0]
