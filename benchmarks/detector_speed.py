"""Compress the YOLOv8n lookalike at a real resolution: wall time and peak memory per stage.

The model is ``sample_models/lookalikes/full/yolov8n_like.{ts,dynamo}.onnx`` (YOLOv8n's widths and depths,
3.15 M parameters, random weights; git-ignored, built with ``python sample_models/lookalikes/build.py --only
yolov8_like --full``, which needs torch). The calibration set is 64 synthetic 480x640 photos-like scenes
(``build.scene_image``, seeded), letterboxed as ultralytics feeds them. Each stage's time comes from compress's
report, and so does its memory: the peak resident set size while the stage ran (``memory`` key).

    python benchmarks/detector_speed.py [--exporter ts|dynamo] [--images 64] [--size 480,640]

Prints a table and writes it to ``benchmarks/results/detector_speed.md``. Time the run on a quiet machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "sample_models" / "lookalikes" / "full"
RESULTS = ROOT / "benchmarks" / "results" / "detector_speed.md"


def _scene_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    spec = importlib.util.spec_from_file_location("lookalikes_build", ROOT / "sample_models" / "lookalikes" / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # its dataclasses look their module up
    spec.loader.exec_module(build)
    rng = np.random.default_rng(seed)
    for i in range(count):
        build.scene_image(rng, *size).save(folder / f"{i:03d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exporter", choices=("ts", "dynamo"), default="ts")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="480,640", help="H,W of the letterboxed calibration images")
    ap.add_argument("--target-flops", type=float, default=0.5)
    args = ap.parse_args(argv)
    model = FULL / f"yolov8n_like.{args.exporter}.onnx"
    if not model.exists():
        print(f"skipped: {model} is missing; build it with "
              "'python sample_models/lookalikes/build.py --only yolov8_like --full' (needs torch)")
        return 0
    size = tuple(int(v) for v in args.size.split(","))

    from onnxprune.calibration.sources import ImageOptions
    from onnxprune.compress import CompressOptions, compress
    from onnxprune.plan import Target

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calib"
        folder.mkdir()
        _scene_images(folder, args.images, size)
        options = CompressOptions(target=Target("flops", args.target_flops),
                                  image=ImageOptions(size=size, resize="letterbox"))
        start = time.perf_counter()
        result = compress(model, folder, options, output=Path(tmp) / "pruned.onnx")
        wall = time.perf_counter() - start
    report = result.report
    memory = report.memory["peak_rss_mib"]
    lines = [f"# Detector compress speed: {model.name}, {args.images} images at {size[0]}x{size[1]} (letterbox), "
             f"--target-flops {args.target_flops}",
             "",
             f"multiply-adds {report.flops[0] / 1e9:.2f} G -> {report.flops[1] / 1e9:.2f} G "
             f"({report.achieved('flops'):.1%}); wall time {wall:.1f} s; peak memory {report.memory['peak_mib']:.0f} MiB "
             "(the largest stage's)",
             "",
             "| stage | seconds | peak resident memory while it ran (MiB) |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {seconds:.1f} | {memory.get(name, float('nan')):.0f} |"
              for name, seconds in report.timings.items()]
    lines += ["", f"command: python benchmarks/detector_speed.py --exporter {args.exporter} --images {args.images} "
              f"--size {args.size}; {sys.platform}, time.perf_counter wall time"]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
