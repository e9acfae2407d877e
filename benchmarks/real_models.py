"""Checks on real models made by others (needs ../shared/data).

Core table (``--part core``):

- mnist-cntk.onnx: calibrate on the first 1 000 MNIST test digits (.npz keyed Input3),
  --target-params 0.5; top-1 on the other 9 000.
- cifar10-tutorial-cnn.onnx: calibrate on train-subset/ images (--num-samples 1000 --mean/--std 0.5),
  --target-flops 0.5; top-1 on the 10 000 JPEG test images.
- keep-all (--target-params 1.0) on both: largest relative output difference.

Third-party exports (``--part exports``, ``../shared/data/real/``): each model is compressed on its
``*.calib.npz`` at every ``--targets`` fraction of the multiply-adds (``--holdout 0``: the test split is apart) and
judged against the original on its ``*.test.npz``, never calibrated on, the way ``--fidelity auto`` judges it
(boxes F1 for the YOLOv8 detector, IoU of the thresholded maps for the text detectors, identical decoded lines
for the recogniser, top-1 agreement for the classifier); beside it the compress stages' seconds (from
``--report``) and solve / calibrate. ``--seeds 0,1,2`` compresses each with every ``--seed`` (the seed draws the
sampled positions; one draw can land on another of two near-equal allocations): the row keeps the first seed's
columns and adds the headline's mean (min–max) over all of them.

Compact CIFAR-10 models (``--part compact``, ``sample_models/compact_cifar/``, trained by
``sample_models/compact_cifar.py``): calibrated on 1 000 train-subset images at every ``--targets`` fraction of the
multiply-adds; top-1 on the 10 000 test JPEGs before and after, and top-1 agreement with the original.

    python benchmarks/real_models.py [--part core|exports|compact|all] [--targets 0.8,0.6,0.5] [--only NAME,...]
                                     [--extra "--independent"] [--seeds 0,1,2]

Prints the tables and writes them to benchmarks/results/real_models.md, real_exports.md and compact_cifar.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import (CIFAR_RESNET, CIFAR_TUTORIAL, accuracy, compress_cli, image_args, predictions,  # noqa: E402
                      publish, require_shared, write_mnist_npz)

ROOT = Path(__file__).resolve().parents[1]


def compress(model: Path, data: Path, out: Path, args: list[str]) -> float:
    seconds, proc = compress_cli(model, data, out, args)
    if proc.returncode:
        sys.exit(f"compress failed: {proc.stderr.strip()}")
    return seconds


def keep_all_difference(original: Path, pruned: Path, feed: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    def run(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        x = feed[name]
        if s.get_inputs()[0].shape[0] == 1:
            return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        return s.run(None, {name: x})[0]

    a, b = run(original), run(pruned)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# name, model file, data files' stem (the PP-OCRv3 detector reads the v5 detector's pages)
EXPORTS = [("yolov8n_doclaynet", "yolov8n_doclaynet.onnx", "yolov8n_doclaynet"),
           ("ppocrv5_mobile_det", "ppocrv5_mobile_det.onnx", "ppocrv5_mobile_det"),
           ("ppocrv3_det", "ppocrv3_det.onnx", "ppocrv5_mobile_det"),
           ("ppocrv5_mobile_rec", "ppocrv5_mobile_rec.onnx", "ppocrv5_mobile_rec"),
           ("efficientnet_lite0", "efficientnet_lite0.onnx", "efficientnet_lite0")]
STAGES = ("calibrate", "solve", "error-correct")


def export_run(model: Path, calib: Path, test: Path, target: float, out: Path, extra: list[str]):
    """Compress ``model`` at ``target`` of its multiply-adds (``out``, its report beside it) and judge it against
    the original on ``test``: (fidelity, report, wall seconds), or the error's last line when compress failed."""
    import onnx

    from onnxprune.calibration.sources import open_data
    from onnxprune.compress import input_specs
    from onnxprune.verify import measure_fidelity

    report = out.with_suffix(".json")
    secs, proc = compress_cli(model, calib, out, ["--target-flops", f"{target:g}", "--holdout", "0",
                                                  "--report", str(report), *extra])
    if proc.returncode:
        return proc.stderr.strip().splitlines()[-1]
    original = onnx.load(str(model))
    data = open_data(test, input_specs(original))
    fid = measure_fidelity(original, onnx.load(str(out)), data, range(len(data)), batch_size=16)
    return fid, json.loads(report.read_text()), secs


def export_row(name: str, model: Path, calib: Path, test: Path, target: float, tmp: Path, extra: list[str],
               seeds: Sequence[int] = (0,)) -> str:
    """The table row of ``model`` at ``target``: the first seed's fidelity, output error and stages, and with more
    than one ``--seed`` the headline's mean (min–max) over all of them (another seed draws other positions)."""
    runs = []
    for seed in seeds:
        run = export_run(model, calib, test, target, tmp / f"{name}_{target:g}_{seed}.onnx",
                         [*extra, "--seed", str(seed)])
        if isinstance(run, str):
            return f"| {name} | {target:g} | failed (seed {seed}): {run} | | | | | |" + " |" * (len(seeds) > 1)
        runs.append(run)
    fid, facts, secs = runs[0]
    stages = [facts["timings"].get(stage, 0.0) for stage in STAGES]
    kept = facts["flops"]["after"] / facts["flops"]["before"]
    ratio = stages[1] / stages[0] if stages[0] else float("nan")
    spread = ""
    if len(seeds) > 1:
        values = np.array([f.headline for f, _, _ in runs])
        spread = f" {values.mean():.3f} ({values.min():.3f}–{values.max():.3f}) |"
    return (f"| {name} | {target:g} | {kept:.1%} | {fid.headline_name or '1 - rel. error'} {fid.headline:.3f} |"
            f"{spread} {fid.relative_error:.3f} | {' / '.join(f'{t:.0f}' for t in stages)} | {ratio:.2f} | {secs:.0f} |")


def exports_table(targets: list[float], only: set[str] | None, extra: list[str], seeds: Sequence[int] = (0,)) -> str:
    """The third-party exports' fidelity and compress stages at each target (module docstring)."""
    real = require_shared() / "real"
    fidelity = "fidelity on the test split vs the original"
    columns = [fidelity] if len(seeds) == 1 else [f"{fidelity} (seed {seeds[0]})",
                                                  f"over seeds {', '.join(map(str, seeds))}: mean (min–max)"]
    head = ("| model | target MACs | kept | " + " | ".join(columns) + " | relative output error | "
            "calibrate / solve / error-correct (s) | solve / calibrate | compress wall (s) |\n"
            "| --- | ---: | ---: |" + " --- |" * len(columns) + " ---: | ---: | ---: | ---: |")
    rows = [head]
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, stem in EXPORTS:
            if only and name not in only:
                continue
            for target in targets:
                rows.append(export_row(name, real / model, real / f"{stem}.calib.npz", real / f"{stem}.test.npz",
                                       target, Path(tmp), extra, seeds))
                print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="checks on the real models")
    ap.add_argument("--part", choices=("core", "exports", "compact", "all"), default="all")
    ap.add_argument("--targets", default="0.8,0.6,0.5", help="fractions of the multiply-adds for the exports")
    ap.add_argument("--only", default="", help="comma-separated export names (default: all)")
    ap.add_argument("--extra", default="", help="extra compress options for every run, quoted")
    ap.add_argument("--seeds", default="0", help="exports: compress with each --seed (comma-separated); with more "
                    "than one the table adds the headline's mean (min-max) over them")
    args = ap.parse_args()
    extra = shlex.split(args.extra)
    suffix = "" if not extra else "_extra"
    if args.part in ("exports", "all"):
        targets = [float(t) for t in args.targets.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        table = exports_table(targets, set(filter(None, args.only.split(","))), extra, seeds)
        cmd = f"python benchmarks/real_models.py --part exports --targets {args.targets}" + \
            (f" --only {args.only}" if args.only else "") + (f' --extra "{args.extra}"' if args.extra else "") + \
            (f" --seeds {args.seeds}" if len(seeds) > 1 or seeds != [0] else "")
        out = ROOT / "benchmarks" / "results" / f"real_exports{suffix}.md"
        out.write_text(f"# Third-party exports: fidelity on held-out test inputs and compress stages\n\n`{cmd}`; "
                       f"2-core x86_64, each compress a fresh process\n\n{table}")
        print(f"wrote {out}")
    if args.part in ("core", "all"):
        core_table(extra, args.extra)
    if args.part in ("compact", "all"):
        compact_table([float(t) for t in args.targets.split(",")], extra, args)


COMPACT = ROOT / "sample_models" / "compact_cifar"


def compact_table(targets: list[float], extra: list[str], args: argparse.Namespace) -> None:
    """The compact CIFAR-10 models trained by ``sample_models/compact_cifar.py`` at each fraction of their
    multiply-adds: top-1 on the 10 000 test JPEGs before and after, and agreement with the original."""
    import onnx

    from onnxprune.metrics import count_model

    shared = require_shared()
    images, testset = shared / "cifar10" / "train-subset", shared / "cifar10" / "test"
    options = image_args(CIFAR_RESNET)
    rows = ["| model | parameters | target MACs | kept | top-1 before | top-1 after | top-1 agreement | "
            "compress (s) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    only = set(filter(None, args.only.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        for model in sorted(COMPACT.glob("*.onnx")):
            if only and model.stem not in only:
                continue
            before = count_model(onnx.load(str(model)))
            top1, labels = predictions(model, testset, **CIFAR_RESNET)
            for target in targets:
                out = Path(tmp) / f"{model.stem}_{target:g}.onnx"
                secs = compress(model, images, out, [*options, "--target-flops", f"{target:g}", *extra])
                kept = count_model(onnx.load(str(out))).flops / before.flops
                after, _ = predictions(out, testset, **CIFAR_RESNET)
                rows.append(f"| {model.stem} | {before.params / 1e3:.0f} k | {target:g} | {kept:.1%} | "
                            f"{np.mean(top1 == labels):.2%} | {np.mean(after == labels):.2%} | "
                            f"{np.mean(after == top1):.2%} | {secs:.0f} |")
                print(rows[-1], flush=True)
    cmd = (f"python benchmarks/real_models.py --part compact --targets {args.targets}" +
           (f" --only {args.only}" if args.only else "") + (f' --extra "{args.extra}"' if args.extra else ""))
    out = ROOT / "benchmarks" / "results" / ("compact_cifar.md" if not extra else "compact_cifar_extra.md")
    publish(f"# Compact CIFAR-10 models at a share of their multiply-adds\n\n`{cmd}`; calibration: 1 000 images of "
            "train-subset (the README's CIFAR normalisation); test: the 10 000 test JPEGs\n\n" + "\n".join(rows) + "\n",
            out)


def core_table(extra: list[str], extra_text: str) -> None:
    """mnist-cntk and the CIFAR tutorial CNN at half their parameters / multiply-adds, and keep-all."""
    shared = require_shared()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mnist = shared / "models" / "mnist-cntk.onnx"
        calib = write_mnist_npz(tmp / "mnist_calib.npz", first=1000)
        test = write_mnist_npz(tmp / "mnist_test.npz", skip=1000)
        secs = compress(mnist, calib, tmp / "mnist.onnx", ["--target-params", "0.5", *extra])
        from onnxprune.metrics import count_model
        import onnx

        kept = count_model(onnx.load(str(tmp / "mnist.onnx"))).params / count_model(onnx.load(str(mnist))).params
        rows.append(("mnist-cntk", "--target-params 0.5", f"{kept:.1%} params", f"{accuracy(mnist, test):.2%}",
                     f"{accuracy(tmp / 'mnist.onnx', test):.2%}", f"{secs:.0f} s"))
        compress(mnist, calib, tmp / "mnist_keep.onnx", ["--target-params", "1.0"])
        x = np.load(test)["Input3"][:200]
        diff_mnist = keep_all_difference(mnist, tmp / "mnist_keep.onnx", {"Input3": x})

        cifar = shared / "models" / "cifar10-tutorial-cnn.onnx"
        images = shared / "cifar10" / "train-subset"
        img_args = image_args(CIFAR_TUTORIAL)
        secs = compress(cifar, images, tmp / "cifar.onnx", [*img_args, "--target-flops", "0.5", *extra])
        kept = count_model(onnx.load(str(tmp / "cifar.onnx"))).flops / count_model(onnx.load(str(cifar))).flops
        testset = shared / "cifar10" / "test"
        rows.append(("cifar10-tutorial-cnn", "--target-flops 0.5", f"{kept:.1%} MACs",
                     f"{accuracy(cifar, testset, **CIFAR_TUTORIAL):.2%}",
                     f"{accuracy(tmp / 'cifar.onnx', testset, **CIFAR_TUTORIAL):.2%}", f"{secs:.0f} s"))
        compress(cifar, images, tmp / "cifar_keep.onnx", [*img_args, "--target-params", "1.0"])
        x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
        diff_cifar = keep_all_difference(cifar, tmp / "cifar_keep.onnx", {"modelInput": x})
    head = "| model | target | kept | top-1 before | top-1 after | compress time |\n| --- | --- | --- | --- | --- | --- |\n"
    table = head + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    table += f"\n\nkeep-all (--target-params 1.0) relative output difference: mnist-cntk {diff_mnist:.1e}, " \
             f"cifar10-tutorial-cnn {diff_cifar:.1e}\n"
    cmd = "python benchmarks/real_models.py --part core" + (f' --extra "{extra_text}"' if extra_text else "")
    print(table)
    out = ROOT / "benchmarks" / "results" / ("real_models.md" if not extra else "real_models_extra.md")
    out.write_text(f"# Core checks on real models\n\n`{cmd}`\n\n{table}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
