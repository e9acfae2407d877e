"""Where a model's time goes on the CPU provider, by the op types onnxruntime runs, with and without its
channel-padding shortcuts written as 1x1 convolutions (README "Shortcuts in the blocked layout").

For each model: onnxruntime's profiler over ``--runs`` calls at ``--batch`` random samples (after 5 warm-up
calls), kernel milliseconds per call summed by op type, for the model as given and (``--shortcut-convs``) as
:func:`onnxprune.rewrite.layout.shortcut_convs` rewrites it.

    python benchmarks/op_times.py MODEL [MODEL ...] [--batch 64] [--runs 30] [--shortcut-convs] [--out FILE]

Writes ``benchmarks/results/op_times.md`` by default. Profile with nothing else running.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "op_times.md"


def _feeds(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """Seeded random inputs of the model's static shape at ``batch`` samples."""
    from onnxprune.graph.io import model_inputs

    rng = np.random.default_rng(0)
    feeds = {}
    for inp in model_inputs(model):
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
        feeds[inp.name] = rng.standard_normal((batch, *dims)).astype(np.float32)
    return feeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="ONNX models with static input dims besides the batch")
    ap.add_argument("--batch", type=int, default=64, help="samples per call")
    ap.add_argument("--runs", type=int, default=30, help="profiled calls per model")
    ap.add_argument("--shortcut-convs", action="store_true", help="also profile each model with its shortcuts rewritten")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the table is written")
    args = ap.parse_args(argv)
    from onnxprune.bench.profile import op_type_times
    from onnxprune.bench.providers import resolve_providers
    from onnxprune.graph.io import load_model
    from onnxprune.graph.normalise import normalise
    from onnxprune.rewrite.layout import shortcut_convs

    provider = resolve_providers(["cpu"])[0]
    columns: dict[str, dict[str, float]] = {}
    for path in args.models:
        model = normalise(load_model(path))
        feeds = _feeds(model, args.batch)
        variants = [(path.stem, model)]
        if args.shortcut_convs:
            variants.append((f"{path.stem}, shortcut convs", shortcut_convs(model)[0]))
        for name, variant in variants:
            columns[name] = op_type_times(variant, feeds, provider, runs=args.runs)
            print(f"{name}: {sum(columns[name].values()):.2f} ms", flush=True)
    ops = sorted({op for times in columns.values() for op in times})
    lines = ["# Kernel time by op type on the CPU provider", "",
             f"`python benchmarks/op_times.py {' '.join(sys.argv[1:] if argv is None else argv)}`; {platform.machine()}, "
             f"onnxruntime's default threads, batch {args.batch}, {args.runs} profiled calls after 5 warm-up calls; "
             "ms per call (each kernel's mean), by the op type onnxruntime ran after its fusions and layout rewrite.",
             "", "| op type | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {op} | " + " | ".join(f"{times.get(op, 0.0):.2f}" for times in columns.values()) + " |" for op in ops]
    lines.append("| **all kernels** | " + " | ".join(f"**{sum(t.values()):.2f}**" for t in columns.values()) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
