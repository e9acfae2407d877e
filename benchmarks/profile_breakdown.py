"""Where a compress run spends its time, by kind of work, from a py-spy profile.

Record a run, then break the samples down:

    py-spy record --rate 50 --format raw -o run.txt -- python -m onnxprune.cli.main compress MODEL --data DATA ...
    python benchmarks/profile_breakdown.py run.txt --title "ResNet-56, 1000 images" [--out benchmarks/results/X.md]

Each sample is put under the first kind (in the order of ``KINDS``) whose marker occurs in its stack, and under
the compress stage whose function it is in; the table gives the share of all samples (py-spy samples wall time
of the main thread, so idle waits count too).
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

# (kind of work, markers: substrings of a frame "function (file:line)"), first match wins
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime session creation", ("InferenceSession.__init__", "_create_inference_session", "make_session")),
    ("ONNX Runtime runs", ("Session.run (", "InferenceSession.run")),
    ("shape inference", ("infer_shapes", "shape_inference")),
    ("graph rewrite", ("apply_plan", "rewrite/apply.py")),
    ("patch unfolding", ("calibration/patches.py",)),
    ("Gram products", ("_add_products", "_fold_rows")),
    ("statistics merge/centring", ("solvers/statistics.py",)),
    ("entropic ranking: Λ-steps (Cholesky and solve)", ("_lambda_step",)),
    ("entropic ranking: other", ("solvers/entropic.py", "solvers/ranking.py")),
    ("error curves and re-fits (ridge validation)", ("solvers/shrinkage.py", "solvers/refit.py", "solvers/lowrank.py")),
    ("data loading and decoding", ("calibration/sources.py", "calibration/images.py", "PIL")),
    ("allocation", ("allocate.py", "costs.py")),
]
# (compress stage, markers), first match wins
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("first calibration pass", ("FirstPass.collect",)),
    ("solve (rankings, allocation)", ("rank_groups (", "solve (onnxprune/plan.py")),
    ("error-correcting passes and re-fits", ("sequential_refit",)),
    ("verify", ("measure_fidelity", "check_pruned")),
    ("load and analyse", ("load_inputs", "find_groups")),
]


def _classify(stack: str, table: list[tuple[str, tuple[str, ...]]], default: str) -> str:
    return next((name for name, markers in table if any(m in stack for m in markers)), default)


def breakdown(path: Path) -> tuple[collections.Counter, collections.Counter, int]:
    kinds, stages, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        kinds[_classify(stack, KINDS, "other (Python, numpy glue)")] += n
        stages[_classify(stack, STAGES, "other")] += n
    return kinds, stages, total


def render(title: str, kinds: collections.Counter, stages: collections.Counter, total: int) -> str:
    lines = [f"# Profile: {title}", "", f"{total} py-spy samples of the main thread (wall time).", "",
             "| stage | share |", "| --- | ---: |"]
    lines += [f"| {name} | {n / total:.1%} |" for name, n in stages.most_common()]
    lines += ["", "| kind of work | share |", "| --- | ---: |"]
    lines += [f"| {name} | {n / total:.1%} |" for name, n in kinds.most_common()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path, help="py-spy record --format raw output")
    ap.add_argument("--title", default="compress")
    ap.add_argument("--out", type=Path, help="also write the tables to this file")
    args = ap.parse_args(argv)
    text = render(args.title, *breakdown(args.profile))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
