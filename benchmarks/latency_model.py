"""How well ``--target-latency``'s model predicts the latency of a pruned graph on the CPU provider.

For each model: its latency table (:func:`onnxprune.latency.measure_latency`, as compress profiles it), then every
prunable group thinned to the same share of its channels (75 %, 50 %, 25 %), the latency that table predicts, the
one it predicts without its per-tensor terms (element-wise ops, resizing, pooling and re-orders kept at their time
on the original, as before 2026-12-07), and the pruned graph timed against the original
(:func:`onnxprune.latency.check_latency`: wall clock, interleaved rounds; ± half the spread of the rounds' ratios).

    python benchmarks/latency_model.py MODEL=DATA.npz [...] [--batch 1] [--runs 10] [--out FILE]

The samples are the first ``--batch`` of DATA, read as compress reads calibration data. Writes
``benchmarks/results/latency_model.md`` by default. Run it with nothing else running.
"""
from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency_model.md"
SHARES = (0.75, 0.5, 0.25)


def _feeds(model, data: Path, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples of ``data`` as the model's feeds, read as compress reads calibration data."""
    from onnxprune.bench.inputs import feeds_for_batch, input_specs as bench_input_specs
    from onnxprune.calibration.sources import open_data
    from onnxprune.compress import input_specs

    samples = open_data(data, input_specs(model)).load(list(range(batch)))
    return feeds_for_batch(samples, bench_input_specs(model), batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="MODEL.onnx=DATA.npz: a model and the samples it is timed on")
    ap.add_argument("--batch", type=int, default=1, help="samples per run")
    ap.add_argument("--runs", type=int, default=10, help="profiled runs per copy and round; timed runs per round")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the table is written")
    args = ap.parse_args(argv)
    from onnxprune.analysis import find_groups
    from onnxprune.bench.providers import resolve_providers
    from onnxprune.graph.io import load_model
    from onnxprune.graph.normalise import normalise, static_shapes
    from onnxprune.graph.precision import to_float32
    from onnxprune.latency import LatencyCost, check_latency, measure_latency, uniform_mask
    from onnxprune.metrics import count_model
    from onnxprune.plan import PrunePlan
    from onnxprune.rewrite import apply_plan

    cpu = resolve_providers(["cpu"])[0]
    rows = []
    for spec in args.models:
        path, _, data = spec.partition("=")
        if not data:
            ap.error(f"{spec}: give the samples as MODEL.onnx=DATA.npz")
        model = to_float32(normalise(load_model(Path(path))))
        feeds = _feeds(model, Path(data), args.batch)
        shapes = {name: value.shape for name, value in feeds.items()}
        analysis = find_groups(model, static_shapes(model, shapes))
        table = measure_latency(model, analysis, feeds, cpu, runs=args.runs)
        counts = count_model(model, shapes)
        costs = [LatencyCost(model, analysis, counts, t) for t in (table, replace(table, tensors={}))]
        share_of_tensors = sum(c.ms for c in table.tensors.values()) / table.total
        for share in SHARES:
            kept = uniform_mask(analysis, share)
            predicted = [cost.evaluate(kept) / cost.before for cost in costs]
            check = check_latency(model, apply_plan(model, analysis, PrunePlan(kept, {}, [])), feeds, cpu,
                                  runs=args.runs)
            rows.append(f"| {Path(path).stem} | {share:.2f} | {share_of_tensors:.0%} | {predicted[0]:.3f} | "
                        f"{predicted[1]:.3f} | {check.ratio:.3f} ± {check.noise:.3f} |")
            print(rows[-1], flush=True)
    lines = ["# The latency model against the measurement", "",
             f"`python benchmarks/latency_model.py {' '.join(sys.argv[1:] if argv is None else argv)}`; "
             f"{platform.machine()}, onnxruntime's default threads, CPU provider, batch {args.batch}. Every prunable "
             "group thinned to the share; latencies as a ratio of the original's.", "",
             "| model | share of every group's channels | per-tensor kernels in the original's kernel time | "
             "predicted | predicted without per-tensor terms | measured |",
             "| --- | ---: | ---: | ---: | ---: | ---: |", *rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
