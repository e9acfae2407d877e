"""Top-1 accuracy of ONNX models on the real test sets in ../shared/data (shared by the benchmark scripts)."""
from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# preprocessing of each real model, from ../shared/data/README.md
CIFAR_TUTORIAL = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
CIFAR_RESNET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def image_args(norm: dict, samples: int = 1000) -> list[str]:
    """The compress options that calibrate on ``samples`` images of a folder with the normalisation ``norm``."""
    return ["--num-samples", str(samples), "--mean", ",".join(map(str, norm["mean"])),
            "--std", ",".join(map(str, norm["std"]))]


def publish(text: str, out: Path) -> None:
    """Print a benchmark's table and write it to ``out`` (its folder made if needed)."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


def require_shared() -> Path:
    """The shared data folder, or exit with a clear message when it is absent."""
    if not SHARED.is_dir():
        sys.exit(f"skipped: real data not found at {SHARED} (this benchmark needs ../shared/data)")
    return SHARED


def mnist(first: int | None = None, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test digits as raw 0-255 float32 N×1×28×28 and int64 labels."""
    root = require_shared() / "mnist"
    x = np.frombuffer(gzip.open(root / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    y = np.frombuffer(gzip.open(root / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    x = x.reshape(-1, 1, 28, 28).astype(np.float32)[skip:]
    y = y.astype(np.int64)[skip:]
    return (x[:first], y[:first]) if first else (x, y)


def write_mnist_npz(path: Path, first: int | None = None, skip: int = 0, input_name: str = "Input3") -> Path:
    """Write MNIST digits as calibration .npz keyed by the model's input name, with labels."""
    x, y = mnist(first, skip)
    np.savez(path, **{input_name: x, "label": y})
    return path


def write_image_npz(model_path: str | Path, folder: str | Path, dest: str | Path, *, mean=None, std=None,
                    num_samples: int | None = None) -> Path:
    """Decode an image folder once, as onnxprune's loader feeds the model, into an .npz (input name + label)."""
    import onnx

    from onnxprune.calibration.sources import ImageOptions, open_data
    from onnxprune.compress import input_specs

    model = onnx.load(str(model_path), load_external_data=False)
    data = open_data(folder, input_specs(model), image_options=ImageOptions(mean=mean, std=std),
                     num_samples=num_samples)
    arrays = data.load(range(len(data)))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez(tmp, **arrays, label=data.labels)
    tmp.replace(dest)
    return dest


def compress_command(model: str | Path, data: str | Path, out: str | Path, args: list[str]) -> list[str]:
    """The command line of a quiet ``onnxprune compress`` run in a fresh Python process."""
    return [sys.executable, "-m", "onnxprune.cli.main", "compress", str(model), "--data", str(data), "-o", str(out),
            "--force", "-q", *args]


def compress_cli(model: str | Path, data: str | Path, out: str | Path,
                 args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``onnxprune compress`` in a fresh process; (wall-clock seconds, finished process)."""
    start = time.perf_counter()
    proc = subprocess.run(compress_command(model, data, out, args), capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc


def predictions(model_path: str | Path, data_path: str | Path, *, mean=None, std=None,
                batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class of every sample, its label) of a model over labelled data (an .npz with labels, or a
    class-folder image tree)."""
    import onnx

    from onnxprune.calibration.sources import ImageOptions, open_data
    from onnxprune.compress import input_specs
    from onnxprune.runtime import create_session, fixed_batch

    model = onnx.load(str(model_path))
    data = open_data(data_path, input_specs(model), image_options=ImageOptions(mean=mean, std=std))
    session = create_session(model)
    size = fixed_batch(model) or batch
    found = [session.run(None, feed)[0].argmax(axis=1) for _, feed in data.batches(range(len(data)), size)]
    return np.concatenate(found), np.asarray(data.labels)


def accuracy(model_path: str | Path, data_path: str | Path, *, mean=None, std=None, batch: int = 256) -> float:
    """Top-1 accuracy of a model over all samples of labelled data (see :func:`predictions`)."""
    found, labels = predictions(model_path, data_path, mean=mean, std=std, batch=batch)
    return float(np.mean(found == labels))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="top-1 accuracy of a model on labelled data")
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--preset", choices=["none", "cifar-tutorial", "cifar-resnet"], default="none")
    args = ap.parse_args()
    pre = {"none": {}, "cifar-tutorial": CIFAR_TUTORIAL, "cifar-resnet": CIFAR_RESNET}[args.preset]
    print(f"{accuracy(args.model, args.data, **pre):.4f}")
