"""The core issue's checks on real models made by others (needs ../shared/data).

- mnist-cntk.onnx: calibrate on the first 1 000 MNIST test digits (.npz keyed Input3),
  --target-params 0.5; top-1 on the other 9 000.
- cifar10-tutorial-cnn.onnx: calibrate on train-subset/ images (--num-samples 1000 --mean/--std 0.5),
  --target-flops 0.5; top-1 on the 10 000 JPEG test images.
- keep-all (--target-params 1.0) on both: largest relative output difference.

    python benchmarks/real_models.py [--extra "--independent"]

Prints a table and writes it to benchmarks/results/real_models.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import CIFAR_TUTORIAL, accuracy, compress_cli, require_shared, write_mnist_npz  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description="core-issue checks on the real models")
    ap.add_argument("--extra", default="", help="extra compress options for both models, quoted")
    args = ap.parse_args()
    shared = require_shared()
    extra = shlex.split(args.extra)
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
        img_args = ["--num-samples", "1000", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
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
    cmd = "python benchmarks/real_models.py" + (f' --extra "{args.extra}"' if args.extra else "")
    print(table)
    out = ROOT / "benchmarks" / "results" / ("real_models.md" if not extra else "real_models_extra.md")
    out.write_text(f"# Core checks on real models\n\n`{cmd}`\n\n{table}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
