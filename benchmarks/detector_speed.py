"""Compress a lookalike at a real resolution and data size: wall time and peak memory per stage.

``--model yolov8`` (default): ``sample_models/lookalikes/full/yolov8n_like.{ts,dynamo}.onnx`` (YOLOv8n's widths and
depths, 3.15 M parameters, random weights) on 64 synthetic 480x640 photo-like scenes (``build.scene_image``,
seeded), letterboxed as ultralytics feeds them; the table goes to ``benchmarks/results/detector_speed.md``.
``--model recogniser``: ``full/ppocrv4_rec_like.*.onnx`` (PP-OCRv4 mobile recogniser's sizes: a 480-channel
backbone, SVTR at 120 channels, a 6 625-character CTC head) on 384 synthetic 48x320 text lines
(``build.text_line_image``), (pixels/255 - 0.5)/0.5; to ``benchmarks/results/recogniser_speed.md``. Both are
git-ignored, built with ``python sample_models/lookalikes/build.py --only yolov8_like|ppocr_rec_like --full``
(needs torch). ``--model classifier``: the committed ``ppocr_cls_like.*.onnx`` (PP-OCR's mobile text orientation
classifier's MobileNetV3-small x0.35, its real size: 1.6 M multiply-adds) on 512 synthetic 48x192 text lines, half
of them upside down (``build.LOOKALIKES['ppocr_cls_like'].images``), (pixels/255 - 0.5)/0.5; to
``benchmarks/results/classifier_speed.md``. Each stage's time comes from compress's report, and so does its memory:
the peak resident set size while the stage ran (``memory`` key).

    python benchmarks/detector_speed.py [--model yolov8|recogniser|classifier] [--exporter ts|dynamo] [--images N]
                                        [--size H,W]

Prints a table and writes it. Time the run on a quiet machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from onnxprune.idle_threads import sleep_when_idle

sleep_when_idle()   # as the command line does, before numpy loads OpenBLAS

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOOKALIKES = ROOT / "sample_models" / "lookalikes"
FULL = LOOKALIKES / "full"
RESULTS = ROOT / "benchmarks" / "results"
# --model: (lookalike, images, H,W, results file, full size in full/, title); the images are the lookalike's own
MODELS = {
    "yolov8": ("yolov8_like", 64, "480,640", "detector_speed.md", True, "Detector"),
    "recogniser": ("ppocr_rec_like", 384, "48,320", "recogniser_speed.md", True, "Recogniser"),
    "classifier": ("ppocr_cls_like", 512, "48,192", "classifier_speed.md", False, "Orientation classifier"),
}


def _build_module():
    """sample_models/lookalikes/build.py (numpy and Pillow at import; torch only to build)."""
    spec = importlib.util.spec_from_file_location("lookalikes_build", ROOT / "sample_models" / "lookalikes" / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # its dataclasses look their module up
    spec.loader.exec_module(build)
    return build


def _images(make, folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        make(rng, *size, i).save(folder / f"{i:03d}.jpg", quality=90)


def _count(value: float) -> str:
    """Multiply-adds in G, or in M below a tenth of a G (the orientation classifier's 0.04 G)."""
    return f"{value / 1e9:.2f} G" if value >= 1e8 else f"{value / 1e6:.1f} M"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="yolov8")
    ap.add_argument("--exporter", choices=("ts", "dynamo"), default="ts")
    ap.add_argument("--images", type=int, help="calibration images (default: 64 scenes, 384 text lines)")
    ap.add_argument("--size", help="H,W of the calibration images (default: 480,640 letterboxed; 48,320)")
    ap.add_argument("--target-flops", type=float, default=0.5)
    args = ap.parse_args(argv)
    lookalike, images, size_text, results, full, title = MODELS[args.model]
    args.images, args.size = args.images or images, args.size or size_text
    build = _build_module()
    model = (FULL / f"{build.FULL_STEMS[lookalike]}.{args.exporter}.onnx" if full
             else LOOKALIKES / f"{lookalike}.{args.exporter}.onnx")
    if not model.exists():
        print(f"skipped: {model} is missing; build it with "
              f"'python sample_models/lookalikes/build.py --only {lookalike} --full' (needs torch)")
        return 0

    from onnxprune.calibration.sources import ImageOptions
    from onnxprune.compress import CompressOptions, compress
    from onnxprune.plan import Target

    size = tuple(int(v) for v in args.size.split(","))
    detector = args.model == "yolov8"
    spec = build.LOOKALIKES[lookalike]
    image = (ImageOptions(size=size, resize="letterbox") if detector
             else ImageOptions(size=size, mean=spec.mean, std=spec.std))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calib"
        folder.mkdir()
        _images(spec.images, folder, args.images, size)
        options = CompressOptions(target=Target("flops", args.target_flops), image=image)
        start = time.perf_counter()
        result = compress(model, folder, options, output=Path(tmp) / "pruned.onnx")
        wall = time.perf_counter() - start
    report = result.report
    memory = report.memory["peak_rss_mib"]
    lines = [f"# {title} compress speed: {model.name}, {args.images} images at "
             f"{size[0]}x{size[1]}{' (letterbox)' if detector else ''}, --target-flops {args.target_flops}",
             "",
             f"multiply-adds {_count(report.flops[0])} -> {_count(report.flops[1])} "
             f"({report.achieved('flops'):.1%}); wall time {wall:.1f} s; peak memory {report.memory['peak_mib']:.0f} MiB "
             "(the largest stage's)",
             "",
             "| stage | seconds | peak resident memory while it ran (MiB) |",
             "| --- | ---: | ---: |"]
    lines += [f"| {name} | {seconds:.1f} | {memory.get(name, float('nan')):.0f} |"
              for name, seconds in report.timings.items()]
    solve = report.timings.get("solve", 0.0)
    lines += ["", f"solve stage: {solve / wall:.0%} of the run, {solve / report.timings['calibrate']:.2f} of the "
              "calibrate stage",
              "", f"command: python benchmarks/detector_speed.py --model {args.model} --exporter {args.exporter} "
              f"--images {args.images} --size {args.size}; {sys.platform}, time.perf_counter wall time"]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / results).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
