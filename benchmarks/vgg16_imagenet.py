"""Scale check at ImageNet size: VGG-16 (BN), 224x224 inputs, 138 M parameters, random weights.

Builds the model with sample_models/vgg16_cifar.py's builder (no torch), writes 64 random
calibration samples and runs compress --target-flops 0.5 (default, error-correcting mode) in a
child process, killed after --timeout seconds. The child logs every progress step with its time, so
a run that does not finish still shows how far it got; the child's own peak RSS is reported either
way (the memory budget is 12 GiB). Writes benchmarks/results/vgg16_imagenet.md.

    python benchmarks/vgg16_imagenet.py [--samples 64] [--target 0.5] [--timeout 1500]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from onnxprune.idle_threads import sleep_when_idle

sleep_when_idle()   # as the command line does, before numpy loads OpenBLAS

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sample_models"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import machine, publish, run_child  # noqa: E402
from vgg16_cifar import build_vgg16_imagenet, count_params  # noqa: E402

BUDGET_GIB = 12.0


def compress_logged(model: str, data: str, out: str, target: float) -> None:
    """The child: compress with every progress step logged to stderr as 'seconds label done/total'."""
    from onnxprune.compress import CompressOptions, compress
    from onnxprune.plan import Target

    start = time.perf_counter()

    def log(text: str) -> None:
        print(f"{time.perf_counter() - start:7.1f}s {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def progress(label: str, total: int):
        done = 0
        log(f"{label} 0/{total}")

        class Bar:
            def update(self, n: int) -> None:
                nonlocal done
                done += n
                log(f"{label} {done}/{total}")
        yield Bar()

    log("load")
    result = compress(model, data, CompressOptions(target=Target("flops", target)), output=out, progress=progress)
    log("done")
    print(json.dumps(result.report.to_dict(), default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64, help="random calibration samples")
    ap.add_argument("--target", type=float, default=0.5, help="--target-flops value")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds before the compress run is stopped")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        compress_logged(*args.child, args.target)
        return
    with tempfile.TemporaryDirectory(prefix="onnxprune-vgg16-") as tmp:
        tmp = Path(tmp)
        model = build_vgg16_imagenet(seed=0)
        params = count_params(model)
        onnx.save(model, str(tmp / "vgg16_imagenet.onnx"))
        del model
        rng = np.random.default_rng(0)
        np.savez(tmp / "calib.npz", input=rng.standard_normal((args.samples, 3, 224, 224), dtype=np.float32))
        run = run_child([sys.executable, __file__, "--target", str(args.target), "--child",
                         str(tmp / "vgg16_imagenet.onnx"), str(tmp / "calib.npz"), str(tmp / "out.onnx")],
                        timeout_s=args.timeout)
    log = run.stderr.strip().splitlines()
    finished = run.returncode == 0
    if finished:
        report = json.loads(run.stdout)
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in report["timings"].items())
        outcome = f"finished: {report['achieved']['flops']:.1%} of the MACs kept; {stages}"
    else:
        outcome = (f"stopped after {run.wall_s:.0f} s (exit {run.returncode}); last progress: "
                   f"{log[-1].strip() if log else 'none'}")
    rows = [
        ("model", f"VGG-16 (BN) ImageNet 224x224, random weights, {params / 1e6:.1f} M parameters"),
        ("calibration samples", f"{args.samples} (random)"),
        ("command", f"compress --target-flops {args.target} (error-correcting)"),
        ("outcome", outcome),
        ("wall time", f"{run.wall_s:.0f} s"),
        ("peak memory (RSS)", f"{run.peak_mib / 1024:.2f} GiB (budget {BUDGET_GIB:.0f} GiB)"),
        ("machine", machine()),
    ]
    table = "| quantity | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    progress = "\n".join(f"    {line}" for line in log[-40:])
    text = (f"# VGG-16 ImageNet-size benchmark\n\n`python benchmarks/vgg16_imagenet.py --timeout {args.timeout:.0f}`"
            f"\n\n{table}\n\nProgress log (last 40 lines; seconds since start):\n\n{progress}\n")
    publish("vgg16_imagenet.md", text)


if __name__ == "__main__":
    main()
