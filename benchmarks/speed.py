"""Is the pruned model faster? Latency ratio pruned/original on the CPU provider, with the fidelity beside it.

For each model: ``onnxprune compress`` at ``--target-flops 0.5`` (the CPU default keeps counts of onnxruntime's NCHWc
channel block, 16 with AVX-512; also with ``--round-to 1``, exact counts) and at ``--target-latency 0.5`` (``--latency-batch`` 1),
each in a fresh process; then both pruned models and the original are timed with ``onnxprune bench``'s
interleaved rounds (``benchmark_models``: p50 of the timed runs, the original and the pruned model taking turns) at
batch 1 and ``--big-batch``, and the pruned model is judged against the original as compress's ``--fidelity auto``
judges it (CIFAR ResNet-56: top-1 on the 10 000 JPEG test images; the exports of ``../shared/data/real/``: their
``*.test.npz``, never calibrated on). A model whose batch is fixed at 1 has no large-batch cell.

    python benchmarks/speed.py [--only resnet56,yolov8_like,ppocrv5_mobile_det,...] [--big-batch 64] [--runs 20]
                               [--targets "flops 0.5,latency 0.5 --latency-batch 64,..."] [--out FILE]

Writes ``benchmarks/results/speed.md``. Time the table with nothing else running: each cell is a ratio of two
models timed in turn, but a loaded machine widens its noise.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import CIFAR_RESNET, SHARED, accuracy, compress_cli, image_args, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speed.md"
LOOKALIKES = ROOT / "sample_models" / "lookalikes"
CIFAR = image_args(CIFAR_RESNET)
TARGETS = {"flops 0.5": ["--target-flops", "0.5"],
           "flops 0.5 --round-to 1": ["--target-flops", "0.5", "--round-to", "1"],
           "flops 0.5 --depth": ["--target-flops", "0.5", "--depth"],
           "flops 0.5 --round-to 16": ["--target-flops", "0.5", "--round-to", "16"],
           "flops 0.5 --round-to 16 --allow-below": ["--target-flops", "0.5", "--round-to", "16", "--allow-below"],
           "latency 0.5": ["--target-latency", "0.5"],
           "latency 0.5 --no-depth": ["--target-latency", "0.5", "--no-depth"],
           "latency 0.5 --latency-batch 64": ["--target-latency", "0.5", "--latency-batch", "64"],
           "latency 0.5 --latency-batch 64 --no-depth": ["--target-latency", "0.5", "--latency-batch", "64",
                                                         "--no-depth"],
           "flops 0.5 --no-shortcut-convs": ["--target-flops", "0.5", "--no-shortcut-convs"],
           "latency 0.5 --latency-batch 64 --no-shortcut-convs": ["--target-latency", "0.5", "--latency-batch", "64",
                                                                  "--no-shortcut-convs"]}
DEFAULT_TARGETS = "flops 0.5,flops 0.5 --round-to 1,latency 0.5"


def _cases() -> dict[str, tuple[Path, Path, list[str], Path | None]]:
    """name -> (model, calibration data, compress options, test data for the fidelity, or None: CIFAR top-1 for
    ResNet-56, compress's held-out figure for the lookalike)."""
    real = SHARED / "real"
    cases = {"resnet56": (SHARED / "models" / "resnet56-cifar10.onnx", SHARED / "cifar10" / "train-subset", CIFAR,
                          None),
             "yolov8_like": (LOOKALIKES / "yolov8_like.ts.onnx", LOOKALIKES / "yolov8_like_calib",
                             ["--image-size", "480,640", "--resize", "letterbox"], None)}   # timed at 480x640
    for name, stem in (("ppocrv5_mobile_det", "ppocrv5_mobile_det"), ("ppocrv3_det", "ppocrv5_mobile_det"),
                       ("ppocrv5_mobile_rec", "ppocrv5_mobile_rec"), ("yolov8n_doclaynet", "yolov8n_doclaynet")):
        cases[name] = (real / f"{name}.onnx", real / f"{stem}.calib.npz", ["--holdout", "0"],
                       real / f"{stem}.test.npz")
    return cases


def _fidelity(name: str, original: Path, pruned: Path, test: Path | None, report: dict) -> str:
    """The pruned model's fidelity as the table shows it."""
    if name == "resnet56":
        return f"top-1 {accuracy(pruned, SHARED / 'cifar10' / 'test', **CIFAR_RESNET):.2%} (83.20% before)"
    if test is None:   # the lookalike has no test split: the held-out figure compress measured
        fid = report.get("fidelity") or {}
        value = fid.get("headline_value")
        return "—" if value is None else f"{fid['headline_name']} {value:.3f} ({fid['samples']} held-out samples)"
    from onnxprune.calibration.sources import open_data
    from onnxprune.compress import input_specs
    from onnxprune.verify import measure_fidelity

    model = onnx.load(str(original))
    data = open_data(test, input_specs(model))
    fid = measure_fidelity(model, onnx.load(str(pruned)), data, range(len(data)), batch_size=8)
    return f"{fid.headline_name or '1 - rel. error'} {fid.headline:.3f}"


def _timed_shapes(name: str, calib: Path) -> dict[str, tuple[int, ...]] | None:
    """The input shape the models are timed at (batch 1; bench sets the batch): the calibration data's size, for
    the exports and the lookalike whose height and width are dynamic."""
    if name == "yolov8_like":
        return {"images": (1, 3, 480, 640)}
    if calib.suffix == ".npz":   # read from each array's header, not the (up to 250 MB) arrays
        from onnxprune.calibration.sources import npz_headers

        return {name: (1, *shape[1:]) for name, (shape, _) in npz_headers(calib).items()}
    return None


def _ratios(original: Path, pruned: Path, batches: tuple[int, ...], runs: int,
            shapes: dict[str, tuple[int, ...]] | None) -> dict[int, float | None]:
    """p50 ratio pruned/original per batch size (None where the model's batch is fixed at another size)."""
    from onnxprune.bench.compare import BenchSettings, Comparison
    from onnxprune.bench.measure import benchmark_models

    settings = BenchSettings(batches=batches, runs=runs, warmup=5)
    results = benchmark_models([original, pruned], batches=batches, runs=runs, warmup=5, rounds=settings.rounds,
                               shapes=shapes)
    return {row["batch"]: row["latency_ratio"] for row in Comparison(*results, "cpu", settings).ratios()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--big-batch", type=int, default=64, help="the large batch size, samples per run")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model and batch size")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help=f"comma-separated rows of: {', '.join(TARGETS)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the table is written")
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r}; choose from: {', '.join(TARGETS)}")
    if not SHARED.is_dir():
        print(f"skipped: real data not found at {SHARED} (this benchmark needs ../shared/data)")
        return 0
    only = set(filter(None, args.only.split(",")))
    batches = (1, args.big_batch)
    rows = [f"| model | target | multiply-adds kept | blocks removed | latency ratio at batch 1 | at batch {args.big_batch} | "
            "--target-latency: predicted / measured in compress | fidelity vs the original | compress (s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (model, calib, options, test) in _cases().items():
            if only and name not in only:
                continue
            if not model.exists():
                print(f"skipped {name}: {model} is absent")
                continue
            shapes = _timed_shapes(name, calib)
            for label in targets:
                target = TARGETS[label]
                out, report_path = tmp / f"{name}.onnx", tmp / f"{name}.json"
                secs, proc = compress_cli(model, calib, out, [*target, *options, "--report", str(report_path)])
                if proc.returncode:
                    rows.append(f"| {name} | {label} | failed: {proc.stderr.strip().splitlines()[-1]} | | | | | | |")
                    print(rows[-1], flush=True)
                    continue
                report = json.loads(report_path.read_text())
                kept = report["flops"]["after"] / report["flops"]["before"]
                ratios = _ratios(model, out, batches, args.runs, shapes)
                lat = report.get("latency") or {}
                check = (f"{lat['predicted_ratio']:.3f} / {lat['measured_ratio']:.3f}" if "measured_ratio" in lat
                         else "—")
                cells = [f"{ratios[b]:.3f}" if ratios.get(b) is not None else "—" for b in batches]
                removed = len(report.get("removed_blocks", []))
                rows.append(f"| {name} | {label} | {kept:.1%} | {removed} | {cells[0]} | {cells[1]} | {check} | "
                            f"{_fidelity(name, model, out, test, report)} | {secs:.0f} |")
                print(rows[-1], flush=True)
    command = (f"python benchmarks/speed.py{' --only ' + args.only if args.only else ''} --big-batch {args.big_batch} "
               f"--runs {args.runs}" + (f" --targets {args.targets!r}" if args.targets != DEFAULT_TARGETS else ""))
    text = "\n".join([
        "# Latency of the pruned models on the CPU provider",
        "",
        f"`{command}`; {platform.machine()}, onnxruntime's default threads, Python "
        f"{platform.python_version()}. Latency ratio: p50 of the pruned model over the original's, the two timed in "
        "interleaved rounds by `onnxprune bench`'s `benchmark_models` (5 warm-up runs each). `--target-latency 0.5` "
        "is met at `--latency-batch 1` unless the row says otherwise. Blocks removed: residual branches removed "
        "whole (README \"Removing whole blocks\").",
        "", *rows, ""])
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
