"""What a channel count costs on onnxruntime's CPU provider: one 3×3 Conv (+ Relu) timed as its input or its output
channels shrink, relative to the full layer.

The FLOPs a channel group saves are not the time it saves: an input count costs about in proportion, but an output
count costs what its next multiple of the NCHWc block (16 with AVX-512) costs, so a group cut below the block saves
its consumers' time and none of its producer's. The table is the data for a count-aware cost model.

    python benchmarks/count_cost.py [--batch 64] [--runs 100] [--out FILE]

Writes ``benchmarks/results/count_cost.md``. Each cell: the smaller of two medians of ``--runs`` timed runs (after 5
warm-up runs), over the smallest of three medians of the full layer; time it with nothing else running.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import publish  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "count_cost.md"
SHAPES = ((32, 16), (16, 32), (8, 64))   # (map side, full channel count): the three stages of a CIFAR ResNet
COUNTS = (1, 4, 8, 12, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64)


def _conv(c_in: int, c_out: int, side: int, batch: int) -> bytes:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(c_out, np.float32), "B")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, side, side])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, c_out, side, side])],
                              [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _median_ms(c_in: int, c_out: int, side: int, batch: int, runs: int) -> float:
    session = ort.InferenceSession(_conv(c_in, c_out, side, batch), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((batch, c_in, side, side)).astype(np.float32)
    for _ in range(5):
        session.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="samples per run")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per median")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the table is written")
    args = ap.parse_args(argv)
    lines = ["# What a channel count costs on the CPU provider", "",
             f"`python benchmarks/count_cost.py --batch {args.batch} --runs {args.runs}`; {platform.machine()}, "
             f"onnxruntime {ort.__version__}, Python {platform.python_version()}. One 3×3 Conv + Relu at batch "
             f"{args.batch}: time with c input (or output) channels over the time of the full layer.", "",
             "| map | full | side | " + " | ".join(str(c) for c in COUNTS) + " |",
             "| --- | ---: | --- | " + " | ".join("---:" for _ in COUNTS) + " |"]
    for side, full in SHAPES:
        base = min(_median_ms(full, full, side, args.batch, args.runs) for _ in range(3))
        for which in ("input", "output"):
            cells = []
            for c in COUNTS:
                if c > full:
                    cells.append("")
                    continue
                shape = (c, full) if which == "input" else (full, c)
                cells.append(f"{min(_median_ms(*shape, side, args.batch, args.runs) for _ in range(2)) / base:.2f}")
            lines.append(f"| {side}×{side} | {full} ({base:.2f} ms) | {which} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
