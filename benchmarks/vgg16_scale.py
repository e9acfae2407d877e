"""Scale check: compress the paper's VGG-16 for CIFAR-10 (random weights, 14.7 M parameters).

Builds the model with sample_models/vgg16_cifar.py (no torch), writes 512 random calibration
samples, runs `onnxprune compress --target-flops 0.5` in a child process and reports its wall
time and peak resident memory. Writes the table to benchmarks/results/vgg16_scale.md.

    python benchmarks/vgg16_scale.py [--samples 512] [--target 0.5]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sample_models"))

from vgg16_cifar import build_vgg16_cifar  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512, help="calibration samples")
    ap.add_argument("--target", default="0.5", help="--target-flops value")
    ap.add_argument("--extra", default="", help="extra compress options, quoted")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "vgg16_cifar.onnx"
        onnx.save(build_vgg16_cifar(seed=0), str(model))
        rng = np.random.default_rng(0)
        np.savez(tmp / "calib.npz", input=rng.standard_normal((args.samples, 3, 32, 32)).astype(np.float32))
        cmd = [sys.executable, "-m", "onnxprune.cli.main", "compress", str(model), "--data", str(tmp / "calib.npz"),
               "--target-flops", args.target, "-o", str(tmp / "out.onnx"), "--report", str(tmp / "r.json"),
               *args.extra.split()]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            sys.exit(f"compress failed ({proc.returncode}): {proc.stderr.strip()}")
        print(proc.stdout)
    rows = [
        ("model", "VGG-16 CIFAR (random weights)"),
        ("calibration samples", str(args.samples)),
        ("target", f"--target-flops {args.target} {args.extra}".strip()),
        ("wall time", f"{wall:.1f} s"),
        ("peak memory (RSS)", f"{peak_mb:.0f} MB"),
        ("machine", f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"),
    ]
    table = "| quantity | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    out = ROOT / "benchmarks" / "results" / "vgg16_scale.md"
    out.write_text("# VGG-16 scale benchmark\n\n`python benchmarks/vgg16_scale.py`\n\n" + table + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
