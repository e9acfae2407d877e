"""How much a compress run costs next to one calibration pass, and what each stage holds in memory.

Two comparisons, each on the current checkout, every command a fresh process:

- ``onnxprune calibrate MODEL --data D --shard 1/1`` (one pass over the data) against
  ``onnxprune compress MODEL --data D --target-flops 0.5`` on the same data, for ResNet-56 (1 000 CIFAR-10
  images of ``../shared/data``, the README's normalisation; skipped when absent) and the paper's VGG-16 for
  CIFAR-10 (``sample_models/vgg16_cifar.py``, random weights, 512 random samples). The two commands run in turn,
  ``--rounds`` times; the ratio is taken per round.
- The error-correct stage against the calibrate stage of one compress run (from ``--report``), for the YOLOv8
  and PP-OCR detector lookalikes (``sample_models/lookalikes``) on 64 synthetic scenes letterboxed to 480x640.

Peak memory: calibrate's own ``ru_maxrss`` (its largest resident set); for compress the largest of its stages'
peaks (``--report`` ``memory.peak_mib``): compress resets the peak at each stage's start, so its ``ru_maxrss`` at
exit is only the last stage's. Prints the tables and writes them to ``benchmarks/results/one_pass.md``.

    python benchmarks/one_pass.py [--rounds 1] [--only resnet56,vgg16,yolov8_like,ppocr_det_like] [--out FILE]

Time it on a quiet machine: the ratios hold only when nothing else runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import CIFAR_RESNET, SHARED, image_args, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "one_pass.md"
LOOKALIKES = ROOT / "sample_models" / "lookalikes"


def _cli(args: list[str]) -> tuple[float, float]:
    """Wall seconds and the peak resident MiB of ``onnxprune ARGS`` in a fresh process (its own ru_maxrss)."""
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "onnxprune.cli.main", *args, "-q"],
                                stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            sys.exit(f"onnxprune {' '.join(args)} failed ({proc.returncode}): {errors.read().strip()}")
    return wall, usage.ru_maxrss / 1024


def _scenes(folder: Path, count: int, size: tuple[int, int]) -> None:
    spec = importlib.util.spec_from_file_location("lookalikes_build", LOOKALIKES / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build
    spec.loader.exec_module(build)
    rng = np.random.default_rng(0)
    for i in range(count):
        build.scene_image(rng, *size).save(folder / f"{i:03d}.jpg", quality=90)


def _vgg16(tmp: Path) -> tuple[Path, Path, list[str]]:
    sys.path.insert(0, str(ROOT / "sample_models"))
    import onnx
    from vgg16_cifar import build_vgg16_cifar

    model = tmp / "vgg16_cifar.onnx"
    onnx.save(build_vgg16_cifar(seed=0), str(model))
    rng = np.random.default_rng(0)
    np.savez(tmp / "vgg16.npz", input=rng.standard_normal((512, 3, 32, 32)).astype(np.float32))
    return model, tmp / "vgg16.npz", []


def _ratio_rows(name: str, model: Path, data: Path, extra: list[str], rounds: int, tmp: Path) -> list[str]:
    rows = []
    for r in range(rounds):
        cal, cal_peak = _cli(["calibrate", str(model), "--data", str(data), "--shard", "1/1",
                              "-o", str(tmp / f"{name}.stats.npz"), "--force", *extra])
        report = tmp / f"{name}.json"
        com, _ = _cli(["compress", str(model), "--data", str(data), "--target-flops", "0.5", "--force",
                       "-o", str(tmp / f"{name}.pruned.onnx"), "--report", str(report), *extra])
        got = json.loads(report.read_text())
        com_peak = got["memory"]["peak_mib"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in got["timings"].items() if v >= 0.05)
        rows.append(f"| {name} | {r + 1} | {cal:.1f} | {com:.1f} | **{com / cal:.2f}** | {cal_peak:.0f} | "
                    f"{com_peak:.0f} | {stages} |")
        print(rows[-1], flush=True)
    return rows


def _stage_row(name: str, model: Path, folder: Path, tmp: Path) -> str:
    report = tmp / f"{name}.json"
    wall, _ = _cli(["compress", str(model), "--data", str(folder), "--image-size", "480,640", "--resize",
                    "letterbox", "--target-flops", "0.5", "--force", "-o", str(tmp / f"{name}.pruned.onnx"),
                    "--report", str(report)])
    got = json.loads(report.read_text())
    peak = got["memory"]["peak_mib"]
    t = got["timings"]
    row = (f"| {name} | {t['calibrate']:.1f} | {t.get('error-correct', 0.0):.1f} | "
           f"**{t.get('error-correct', 0.0) / t['calibrate']:.2f}** | {t['solve']:.1f} | {wall:.1f} | "
           f"{peak:.0f} |")
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="calibrate/compress pairs per model")
    ap.add_argument("--only", default="resnet56,vgg16,yolov8_like,ppocr_det_like", help="comma-separated rows")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the table is written")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    lines = ["# One-pass error correction: compress against one calibration pass", "",
             f"`python benchmarks/one_pass.py --rounds {args.rounds} --only {args.only}`; "
             f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             "every command a fresh process, wall time by time.perf_counter.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = []
        if "resnet56" in only:
            model = SHARED / "models" / "resnet56-cifar10.onnx"
            if model.exists():
                cases.append(("resnet56", model, SHARED / "cifar10" / "train-subset", image_args(CIFAR_RESNET)))
            else:
                print(f"skipped resnet56: {model} is absent")
        if "vgg16" in only:
            cases.append(("vgg16", *_vgg16(tmp)))
        if cases:
            lines += ["| model | round | calibrate --shard 1/1 (s) | compress --target-flops 0.5 (s) | ratio | "
                      "calibrate peak (MiB) | compress peak (MiB) | compress stages (s) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
            for case in cases:
                lines += _ratio_rows(*case, args.rounds, tmp)
            lines.append("")
        detectors = [name for name in ("yolov8_like", "ppocr_det_like") if name in only]
        if detectors:
            folder = tmp / "scenes"
            folder.mkdir()
            _scenes(folder, 64, (480, 640))
            lines += ["| lookalike (64 scenes, 480x640 letterbox) | calibrate (s) | error-correct (s) | ratio | "
                      "solve (s) | compress wall (s) | peak (MiB) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            lines += [_stage_row(name, LOOKALIKES / f"{name}.ts.onnx", folder, tmp) for name in detectors]
            lines.append("")
    text = "\n".join(lines) + "\n"
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
