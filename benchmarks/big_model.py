"""Big-model check: a model over 2 GB (external data) through onnxprune's loader, pipeline and writer.

Generates, in a temporary folder, an MLP whose first layer holds about 2.3 GB of random float32
weights, written as external data: x[N, 139264] -> two Gemms of 2048 outputs (1.1 GB each: protobuf
cannot hold one tensor over 2 GB) -> Concat -> Relu -> Gemm 1024 -> Relu -> Gemm 10, and 64 random
calibration samples. Then runs `onnxprune compress` in child processes:

1. keep-all (`--target-flops 1.0`): load -> normalise -> analyse -> rewrite -> verify -> save; the
   output must again be over 2 GB with its weights in OUT.data, and give the original's outputs;
2. `--target-flops 0.5` (calibration, solve, error-correcting re-fit): the pruned model is loaded
   back with onnxprune's loader and run.

Prints wall time and peak RSS of each run and writes benchmarks/results/big_model.md.

    python benchmarks/big_model.py [--samples 64] [--in-features 139264]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child import ChildRun, machine, publish, run_child  # noqa: E402
from evaluate import compress_command  # noqa: E402

HIDDEN = (4096, 1024, 10)  # the first layer is two Gemms of half the width, concatenated


def write_model(folder: Path, in_features: int, seed: int = 0) -> Path:
    """Write big.onnx and big.onnx.data (weights generated row block by row block, never all in memory)."""
    rng = np.random.default_rng(seed)
    path, data_name = folder / "big.onnx", "big.onnx.data"
    inits, nodes, offset = [], [], 0
    with open(folder / data_name, "wb") as data:
        def external(name: str, shape: tuple[int, ...], scale: float) -> None:
            nonlocal offset
            start = offset
            for rows in np.array_split(np.arange(shape[0]), max(1, shape[0] // 256)):
                block = (rng.standard_normal((len(rows), *shape[1:]), dtype=np.float32) * np.float32(scale))
                data.write(block.tobytes())
                offset += block.nbytes
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", start), ("length", offset - start)):
                tensor.external_data.add(key=key, value=str(value))
            inits.append(tensor)

        def gemm(name: str, x: str, shape: tuple[int, int]) -> str:
            external(f"{name}.weight", shape, 1.0 / np.sqrt(shape[1]))
            external(f"{name}.bias", shape[:1], 0.1)
            nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [name], name=name, transB=1))
            return name

        halves = [gemm(f"fc1{part}", "x", (HIDDEN[0] // 2, in_features)) for part in "ab"]
        nodes.append(helper.make_node("Concat", halves, ["fc1"], name="concat", axis=1))
        cur = "fc1"
        for i, (out, width) in enumerate(zip(HIDDEN[1:], HIDDEN), 2):
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i - 1}"], name=f"relu{i - 1}"))
            cur = gemm(f"fc{i}", f"relu{i - 1}", (out, width))
    graph = helper.make_graph(nodes, "big_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_features])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", HIDDEN[-1]])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="onnxprune-benchmarks")
    onnx.save_model(model, str(path))
    return path


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def size_gb(path: Path) -> float:
    extra = path.with_name(path.name + ".data")
    return (path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)) / 1e9


def compress(model: Path, data: Path, out: Path, target: str) -> tuple[ChildRun, dict]:
    report = out.with_suffix(".json")
    run = run_child(compress_command(model, data, out, ["--target-flops", target, "--report", str(report)]))
    if run.returncode:
        sys.exit(f"compress --target-flops {target} failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    return run, json.loads(report.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64, help="random calibration samples")
    ap.add_argument("--in-features", type=int, default=139_264, help="input width (sets the model size)")
    args = ap.parse_args()
    need_gb = 4 * 4 * HIDDEN[0] * args.in_features / 1e9  # the model, two outputs and temporary copies
    with tempfile.TemporaryDirectory(prefix="onnxprune-big-") as tmp:
        tmp = Path(tmp)
        free_gb = shutil.disk_usage(tmp).free / 1e9
        if free_gb < need_gb:
            sys.exit(f"{tmp} has {free_gb:.1f} GB free; this benchmark needs about {need_gb:.0f} GB")
        model = write_model(tmp, args.in_features)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((args.samples, args.in_features), dtype=np.float32)
        np.savez(tmp / "calib.npz", x=x)
        from onnxprune.graph.io import load_model

        rows = []
        for target in ("1.0", "0.5"):
            out = tmp / f"out{target}.onnx"
            run, report = compress(model, tmp / "calib.npz", out, target)
            load_model(out)  # onnxprune's loader, onnx.checker included
            external = out.with_name(out.name + ".data").exists()
            probe = x[:4]
            if target == "1.0":
                diff = float(np.abs(outputs(model, probe) - outputs(out, probe)).max())
                check = f"outputs equal the original's (max abs difference {diff:g})"
                if diff != 0.0 or not external:
                    sys.exit(f"keep-all round trip failed: {check}, external data {external}")
            else:
                fid = report["fidelity"]
                check = (f"loads and runs; held-out top-1 agreement {fid['top1_agreement']:.1%}, "
                         f"relative output error {fid['relative_error']:.3f}")
                assert np.isfinite(outputs(out, probe)).all()
            timings = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings"].items())
            rows.append((f"--target-flops {target}", f"{size_gb(model):.2f} GB -> {size_gb(out):.2f} GB"
                         f"{' (weights in OUT.data)' if external else ''}", f"{run.wall_s:.0f} s",
                         f"{run.peak_mib / 1024:.1f} GiB", timings, check))
            print(rows[-1])
    table = ("| run | model size | wall time | peak RSS | stages | check |\n| --- | --- | --- | --- | --- | --- |\n"
             + "\n".join("| " + " | ".join(r) + " |" for r in rows))
    publish("big_model.md", f"# Big-model benchmark\n\n`python benchmarks/big_model.py` (MLP {args.in_features} -> "
            f"{' -> '.join(map(str, HIDDEN))}, {args.samples} random calibration samples; {machine()})\n\n{table}\n")


if __name__ == "__main__":
    main()
