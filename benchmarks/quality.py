"""Top-1 versus FLOPs kept on the real models: onnxprune's methods against onnxsim 0.8.1's ONNX pruning.

Models (``../shared/data/models``), calibration and test splits, as in ``../shared/data/README.md``:

- ``mnist``: mnist-cntk.onnx, calibrated on the first 1 000 MNIST test digits, scored on the other 9 000;
- ``cifar-tutorial``, ``resnet20``, ``resnet56``: calibrated on ``train-subset/`` with ``--num-samples 1000``
  (1 000 images drawn at random with the default seed, every class represented), scored on all 10 000
  images of ``test/``.

Methods: onnxprune through its CLI in a fresh process (``default``, ``exact``, ``independent``, ``l1``, ``l1-no-refit``,
``random``), and onnxsim's ``apply_structured_pruning`` (L1, L2) and ``apply_structured_wanda_pruning`` on the
model after ``onnxsim.simplify`` (which folds CNTK's bias Adds into the Convs; without it onnxsim prunes
nothing of mnist-cntk). onnxsim's knob is a per-chain (uniform) or pooled (global) channel ratio: it is
bisected until the multiply-adds of its output (``onnxprune.metrics.count_model``) are as close to the
target as it allows; both variants are scored and the better one is reported.

Every cell is cached in ``benchmarks/results/quality_cells.json`` keyed by model, method and target, so a
run can be resumed, extended (``--models``, ``--methods``, ``--fractions``) or re-rendered (``--render-only``).
Decoded test sets are cached as .npz under ``~/.cache/onnxprune-bench`` (``ONNXPRUNE_BENCH_CACHE``).

    python benchmarks/quality.py [--models mnist,cifar-tutorial] [--methods default,onnxsim-l1] [--fractions 0.5]

Writes ``benchmarks/RESULTS.md`` and ``benchmarks/results/quality.png``. Needs the ``[bench]`` extra.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import (
    CIFAR_RESNET,
    CIFAR_TUTORIAL,
    accuracy,
    compress_cli,
    image_args,
    require_shared,
    write_image_npz,
    write_mnist_npz,
)

from onnxprune.atomic import write_text_atomic
from onnxprune.graph.io import model_inputs
from onnxprune.metrics import ModelCounts, count_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CELLS = RESULTS_DIR / "quality_cells.json"
REPORT = ROOT / "benchmarks" / "RESULTS.md"
FIGURE = RESULTS_DIR / "quality.png"
CACHE = Path(os.environ.get("ONNXPRUNE_BENCH_CACHE", Path.home() / ".cache" / "onnxprune-bench"))
CALIB_SAMPLES = 1000
FRACTIONS = (0.8, 0.6, 0.5, 0.35)


@dataclass(frozen=True)
class ModelSpec:
    """A real model and how its data is prepared."""

    key: str
    file: str
    title: str
    norm: dict = field(default_factory=dict)  # mean/std of the image preprocessing; empty for MNIST
    preset: str = ""  # name of the normalisation, part of cached file names

    @property
    def is_mnist(self) -> bool:
        return not self.norm


MODELS = {m.key: m for m in (
    ModelSpec("mnist", "mnist-cntk.onnx", "MNIST CNTK"),
    ModelSpec("cifar-tutorial", "cifar10-tutorial-cnn.onnx", "CIFAR-10 tutorial CNN", CIFAR_TUTORIAL, "tutorial"),
    ModelSpec("resnet20", "resnet20-cifar10.onnx", "ResNet-20 (CIFAR-10)", CIFAR_RESNET, "resnet"),
    ModelSpec("resnet56", "resnet56-cifar10.onnx", "ResNet-56 (CIFAR-10)", CIFAR_RESNET, "resnet"),
)}

# onnxprune methods: extra `compress` options
# (the method rows keep exact counts, as every row did before the CPU-block default of 2026-12-05, so that they
# compare ranking methods; the cells measured before then ran the same options without the `--round-to 1`)
ONNXPRUNE = {
    "default": [],
    "plain": ["--activation-passes", "0"],
    "exact": ["--round-to", "1"],
    "independent": ["--independent", "--round-to", "1"],
    "l1": ["--method", "l1", "--round-to", "1"],
    "l1-no-refit": ["--method", "l1", "--no-refit", "--round-to", "1"],
    "random": ["--method", "random", "--round-to", "1"],
}
# onnxsim methods: (importance_norm, calibrated Wanda)
ONNXSIM = {"onnxsim-l1": ("l1", False), "onnxsim-l2": ("l2", False), "onnxsim-wanda": ("l2", True)}
LABELS = {
    "default": "onnxprune default (entropic, error-correcting; counts of this CPU's 16-channel blocks)",
    "plain": "onnxprune `--activation-passes 0` (the re-fits before a ReLU by plain least squares: the default before 2026-12-06)",
    "exact": "onnxprune `--round-to 1` (exact counts: the default before 2026-12-05)",
    "independent": "onnxprune entropic `--independent --round-to 1`",
    "l1": "onnxprune `--method l1 --round-to 1` (re-fit)",
    "l1-no-refit": "onnxprune `--method l1 --no-refit --round-to 1`",
    "random": "onnxprune `--method random --round-to 1` (re-fit)",
    "onnxsim-l1": "onnxsim `apply_structured_pruning` L1",
    "onnxsim-l2": "onnxsim `apply_structured_pruning` L2",
    "onnxsim-wanda": "onnxsim `apply_structured_wanda_pruning`",
}
METHODS = tuple(LABELS)


# ----------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Prepared:
    """Paths and options of one model's data."""

    model: Path
    calib: Path  # what `compress --data` gets
    calib_args: list[str]  # the data options of `compress`
    calib_npz: Path  # the same calibration samples, decoded (for onnxsim's Wanda)
    test: Path  # decoded, labelled test set
    input: str  # the model's input name
    counts: ModelCounts  # the original's parameters and multiply-adds


def prepare(spec: ModelSpec, shared: Path) -> Prepared:
    """Write (once) the model's calibration and test .npz files into the cache folder."""
    model = shared / "models" / spec.file
    loaded = onnx.load(str(model))
    name, counts = model_inputs(loaded)[0].name, count_model(loaded)
    CACHE.mkdir(parents=True, exist_ok=True)
    if spec.is_mnist:
        calib = cached(CACHE / f"mnist-calib{CALIB_SAMPLES}-{name}.npz",
                       lambda p: write_mnist_npz(p, first=CALIB_SAMPLES, input_name=name))
        test = cached(CACHE / f"mnist-test-after{CALIB_SAMPLES}-{name}.npz",
                      lambda p: write_mnist_npz(p, skip=CALIB_SAMPLES, input_name=name))
        return Prepared(model, calib, [], calib, test, name, counts)
    folder = shared / "cifar10"
    calib_npz = cached(CACHE / f"cifar10-train{CALIB_SAMPLES}-{name}-{spec.preset}.npz",
                       lambda p: write_image_npz(model, folder / "train-subset", p, num_samples=CALIB_SAMPLES, **spec.norm))
    test = cached(CACHE / f"cifar10-test-{name}-{spec.preset}.npz",
                  lambda p: write_image_npz(model, folder / "test", p, **spec.norm))
    args = image_args(spec.norm, CALIB_SAMPLES)
    return Prepared(model, folder / "train-subset", args, calib_npz, test, name, counts)


def cached(path: Path, write: Callable[[Path], Path]) -> Path:
    """``path``, written by ``write`` when it does not exist yet."""
    if not path.exists():
        print(f"  preparing {path}", flush=True)
        write(path)
    return path


# ----------------------------------------------------------------------------------------------------
# cells


def load_cells() -> dict:
    """The cache document: {'originals': {model: ...}, 'cells': {'model|method|target': ...}}."""
    if CELLS.exists():
        return json.loads(CELLS.read_text())
    return {"originals": {}, "cells": {}}


def save_cells(doc: dict) -> None:
    CELLS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(CELLS, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def cell_key(model: str, method: str, target: float) -> str:
    return f"{model}|{method}|{target:g}"


def kept(model_path: Path, base) -> tuple[float, float]:
    """(FLOPs kept, parameters kept) of a model relative to the original counts."""
    counts = count_model(onnx.load(str(model_path)))
    return counts.flops / base.flops, counts.params / base.params


def stamp() -> dict:
    """Where, when and on which onnxprune source a cell was measured."""
    return {"machine": machine()["short"], "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "source": source_revision(), "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
            "load1": round(os.getloadavg()[0], 2)}


def source_revision() -> str:
    """The checkout's commit, with '+dirty' when onnxprune's sources differ from it (read-only git calls)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "onnxprune", "cli")
    return head + ("+dirty" if dirty else "")


def original_cell(data: Prepared) -> dict:
    return {"top1": accuracy(data.model, data.test), "flops": data.counts.flops, "params": data.counts.params}


def onnxprune_cell(data: Prepared, method: str, target: float, tmp: Path) -> dict:
    """Compress through the CLI in a fresh process, then score; wall-clock seconds of the whole command."""
    out = tmp / "pruned.onnx"
    args = [*data.calib_args, "--target-flops", f"{target:g}", *ONNXPRUNE[method]]
    seconds, proc = compress_cli(data.model, data.calib, out, args)
    command = " ".join(["onnxprune compress", data.model.name, "--data", data.calib.name, *args])
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["(no message)"]
        return {"error": f"exit {proc.returncode}: {lines[-1]}", "command": command, "seconds": seconds}
    flops, params = kept(out, data.counts)
    return {"top1": accuracy(out, data.test), "flops": flops, "params": params, "seconds": seconds,
            "command": command}


# ----------------------------------------------------------------------------------------------------
# onnxsim


class OnnxsimRunner:
    """onnxsim's pruning of one (simplified) model, memoised per (method, variant, ratio)."""

    MAX_RATIO = 0.99
    STEPS = 9  # bisection steps per target
    TOLERANCE = 0.002  # stop when the FLOPs kept are this close to the target

    def __init__(self, data: Prepared):
        import onnxsim

        self.data = data
        self.base = data.counts
        start = time.perf_counter()
        self.model, ok = onnxsim.simplify(onnx.load(str(data.model)))
        self.simplify_seconds = time.perf_counter() - start
        if not ok:
            raise RuntimeError(f"onnxsim.simplify could not validate {data.model.name}")
        self.memo: dict[tuple, tuple[float, float, onnx.ModelProto]] = {}
        self._calibration: list[dict[str, np.ndarray]] | None = None

    def calibration(self) -> list[dict[str, np.ndarray]]:
        """The calibration samples as onnxsim wants them: a list of {input: batch} dicts."""
        if self._calibration is None:
            from onnxprune.runtime import fixed_batch

            arrays = np.load(self.data.calib_npz)
            name = self.data.input
            x = arrays[name]
            size = fixed_batch(self.model) or 250
            self._calibration = [{name: x[i:i + size]} for i in range(0, len(x), size)]
        return self._calibration

    def prune(self, method: str, variant: str, ratio: float) -> tuple[float, float, onnx.ModelProto]:
        """(FLOPs kept, seconds of the pruning call, model) at a channel ratio."""
        key = (method, variant, round(ratio, 6))
        if key not in self.memo:
            from onnxsim.pruning import (
                apply_structured_pruning,
                apply_structured_wanda_pruning,
            )

            norm, wanda = ONNXSIM[method]
            start = time.perf_counter()
            if wanda:
                out = apply_structured_wanda_pruning(self.model, calibration_data=self.calibration(), sparsity=ratio,
                                                     importance_norm=norm, global_sparsity=variant == "global")
            else:
                out = apply_structured_pruning(self.model, sparsity=ratio, importance_norm=norm,
                                               global_sparsity=variant == "global")
            seconds = time.perf_counter() - start
            self.memo[key] = (count_model(out).flops / self.base.flops, seconds, out)
        return self.memo[key]

    def match(self, method: str, variant: str, target: float) -> float:
        """The ratio whose output keeps FLOPs closest to ``target`` (bisection; FLOPs fall as the ratio grows)."""
        tried = {r: self.prune(method, variant, r)[0] for r in (0.0, self.MAX_RATIO)}
        lo, hi = 0.0, self.MAX_RATIO
        if tried[hi] < target:
            for _ in range(self.STEPS):
                mid = (lo + hi) / 2
                tried[mid] = self.prune(method, variant, mid)[0]
                if abs(tried[mid] - target) <= self.TOLERANCE:
                    break
                lo, hi = (mid, hi) if tried[mid] > target else (lo, mid)
        return min(tried, key=lambda r: (abs(tried[r] - target), r))

    def variant_cell(self, method: str, variant: str, target: float, tmp: Path) -> dict:
        ratio = self.match(method, variant, target)
        flops, seconds, model = self.prune(method, variant, ratio)
        path = tmp / f"{method}-{variant}.onnx"
        onnx.save(model, str(path))
        cell = {"ratio": round(ratio, 5), "flops": flops, "params": count_model(model).params / self.base.params,
                "seconds": self.simplify_seconds + seconds, "top1": accuracy(path, self.data.test)}
        if flops >= 1.0:
            cell["note"] = "prunes nothing"
        return cell

    def cell(self, method: str, target: float, tmp: Path) -> dict:
        """Both variants scored; the cell's figures are those of the better one."""
        variants = {v: self.variant_cell(method, v, target, tmp) for v in ("uniform", "global")}
        pruning = {v: c for v, c in variants.items() if "note" not in c} or variants
        best = max(pruning, key=lambda v: (pruning[v]["top1"], -abs(pruning[v]["flops"] - target)))
        return {**variants[best], "variant": best, "variants": variants}


# ----------------------------------------------------------------------------------------------------
# machine and versions


def machine() -> dict:
    """CPU model, cores and thread settings of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return {"cpu": cpu, "cores": cores, "openblas_threads": blas, "os": platform.platform(),
            "short": f"{cpu}, {cores} cores"}


def versions() -> dict:
    """Versions of the packages that shape the figures."""
    out = {"python": platform.python_version()}
    for pkg in ("onnxprune", "onnx", "onnxruntime", "onnxsim", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ----------------------------------------------------------------------------------------------------
# report


def cell_text(cell: dict | None) -> str:
    if cell is None:
        return "—"
    if "error" in cell:
        return f"failed ({cell['error'].split(':')[0]})"
    if cell.get("note") == "prunes nothing":
        return "prunes nothing"
    variant = {"uniform": " u", "global": " g"}.get(cell.get("variant", ""), "")
    return f"**{100 * cell['top1']:.2f}** ({cell['flops']:.3f}{variant}, {seconds(cell['seconds'])} s)"


def seconds(value: float) -> str:
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def model_section(spec: ModelSpec, doc: dict, fractions: list[float]) -> str:
    orig = doc["originals"].get(spec.key)
    split = ("calibration: first 1 000 MNIST test digits; score: the other 9 000" if spec.is_mnist else
             "calibration: `train-subset/ --num-samples 1000` (1 000 images drawn at random with seed 0, every "
             "class represented); score: the 10 000 images of `test/`")
    head = f"### {spec.title} (`{spec.file}`)\n\n"
    head += f"Original top-1 **{100 * orig['top1']:.2f} %**, {orig['flops']:,} MACs, {orig['params']:,} parameters; " \
        if orig else "Original not measured yet; "
    head += split + ".\n\n"
    rows = ["| method | " + " | ".join(f"{f:g}" for f in fractions) + " |",
            "| --- |" + " --- |" * len(fractions)]
    for method in METHODS:
        cells = [doc["cells"].get(cell_key(spec.key, method, f)) for f in fractions]
        if any(cells):
            rows.append(f"| {LABELS[method]} | " + " | ".join(cell_text(c) for c in cells) + " |")
    return head + "\n".join(rows) + "\n"


def machines_seen(doc: dict) -> list[str]:
    return sorted({c.get("machine", "?") for c in doc["cells"].values()})


def render(doc: dict, command: str) -> str:
    """RESULTS.md: one table per model, the figure, the tables of :func:`measured_elsewhere`, machine and
    versions."""
    fractions = sorted({float(k.split("|")[2]) for k in doc["cells"]} | set(FRACTIONS), reverse=True)
    specs = [MODELS[m] for m in MODELS if m in doc["originals"] or any(k.startswith(m + "|") for k in doc["cells"])]
    ver = versions()
    mach = machine()
    parts = [
        "# Top-1 versus FLOPs kept on real models\n",
        ("Generated by `benchmarks/quality.py` from `benchmarks/results/quality_cells.json` (one entry per model, "
         "method and target; cells not measured yet show —). `python benchmarks/quality.py` measures every missing "
         "cell (all models, methods and targets; `--redo` measures cached ones again), "
         "`python benchmarks/quality.py --render-only` rewrites this file and the figure.\n"),
        f"This file was last written by: `{command}`\n",
        ("Each cell: **top-1 %** (FLOPs kept as achieved, multiply-adds of Conv/Gemm/MatMul at batch 1 by "
         "`onnxprune.metrics.count_model`; compress seconds). Columns are the FLOPs targets.\n"),
        ("- onnxprune cells: `onnxprune compress MODEL --data CALIB --target-flops F [method options]` in a fresh "
         "process; seconds are its wall clock (Python start, data loading and JPEG decoding, calibration, solve, "
         "rewrite, hold-out verification, save). `--holdout` keeps its default 0.1, so 900 of the 1 000 samples "
         "calibrate.\n"
         "- onnxsim cells: `onnxsim.simplify`, then `onnxsim.pruning.apply_structured_pruning(model, sparsity=r, "
         "importance_norm=l1|l2, global_sparsity=…)` or `apply_structured_wanda_pruning(model, calibration_data=…, "
         "sparsity=r, global_sparsity=…)` with the same 1 000 calibration samples. The ratio r is bisected until "
         "the FLOPs kept are as close to the target as onnxsim allows; both the uniform (u) and the global (g) "
         "variant are scored and the better is shown (the other is in the JSON). Seconds: simplify plus the one "
         "pruning call at the chosen r, in process (the bisection is not counted). \"prunes nothing\": no ratio "
         "changes the model (onnxsim matches no chain).\n"),
        "![top-1 versus FLOPs kept](results/quality.png)\n",
    ]
    parts += [model_section(s, doc, fractions) for s in specs]
    parts += measured_elsewhere()
    parts.append("## Machine and versions\n")
    parts.append(f"- measured on: {'; '.join(machines_seen(doc)) or '—'}")
    loads = [c["load1"] for c in doc["cells"].values() if "load1" in c]
    if loads:
        parts.append(f"- 1-minute load average after each cell: {min(loads):.1f} to {max(loads):.1f} "
                     f"(on {machine()['cores']} cores; above the core count, other jobs shared the machine and the "
                     "seconds are inflated)")
    parts.append(f"- OPENBLAS_NUM_THREADS of the cells: "
                 f"{', '.join(sorted({str(c.get('openblas_threads', '?')) for c in doc['cells'].values()}))}")
    parts.append(f"- onnxprune source of the cells: {', '.join(sorted({c.get('source', '?') for c in doc['cells'].values()}))} "
                 "(+dirty: uncommitted changes in onnxprune/ or cli/ at the time)")
    parts.append(f"- rendered on: {mach['cpu']}, {mach['cores']} cores, OPENBLAS_NUM_THREADS={mach['openblas_threads']}, "
                 f"{mach['os']}")
    parts.append("- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()) + "\n")
    return "\n".join(parts)


def plot(doc: dict, path: Path) -> None:
    """Top-1 versus achieved FLOPs kept, one subplot per model, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [s for s in MODELS.values() if any(k.startswith(s.key + "|") for k in doc["cells"])]
    if not specs:
        return
    cols = min(2, len(specs))
    rows = (len(specs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.6 * rows), squeeze=False)
    for ax, spec in zip(axes.flat, specs):
        plot_model(ax, spec, doc)
    for ax in list(axes.flat)[len(specs):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:len(specs)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) + 2) // 3), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_model(ax, spec: ModelSpec, doc: dict) -> None:
    orig = doc["originals"].get(spec.key)
    for i, method in enumerate(METHODS):
        pts = sorted((c["flops"], 100 * c["top1"]) for k, c in doc["cells"].items()
                     if k.startswith(f"{spec.key}|{method}|") and "top1" in c and "note" not in c)
        if pts:
            style = "--" if method.startswith("onnxsim") else "-"
            ax.plot(*zip(*pts), style, marker="os^vDPX*hp<>"[i], label=LABELS[method].replace("`", ""), color=f"C{i}")
    if orig:
        ax.axhline(100 * orig["top1"], color="k", lw=0.8, ls=":", label="original")
    ax.set_title(f"{spec.title}")
    ax.set_xlabel("FLOPs kept (achieved)")
    ax.set_ylabel("top-1 %")
    ax.grid(alpha=0.3)


# tables other scripts write to results/: (file, section title, the command that writes it)
ELSEWHERE = [("real_exports.md", "Third-party exports: fidelity against the original",
              "python benchmarks/real_models.py --part exports"),
             ("compact_cifar.md", "Compact CIFAR-10 models trained here",
              "python benchmarks/real_models.py --part compact"),
             ("speed_counts.md", "Latency at the CPU's channel-block counts (the default) and at exact counts",
              "python benchmarks/speed.py --targets 'flops 0.5,flops 0.5 --round-to 1'"),
             ("speed.md", "Latency of the pruned models on the CPU provider", "python benchmarks/speed.py"),
             ("speed_depth.md", "ResNet-56 with and without removing whole blocks",
              "python benchmarks/speed.py --only resnet56 --targets …")]


def measured_elsewhere() -> list[str]:
    """The real-exports, compact-CIFAR and speed tables (with the depth-pruning one) of ``results/``, each under its
    own heading (their own first heading dropped, the rest one level down), as their scripts last wrote them."""
    parts = []
    for name, title, command in ELSEWHERE:
        path = RESULTS_DIR / name
        if not path.is_file():
            continue
        text = path.read_text()
        body = text.split("\n", 1)[1].strip() if text.startswith("# ") else text
        body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
        parts.append(f"## {title}\n\nFrom `benchmarks/results/{name}` (`{command}`).\n\n{body}\n")
    return parts


def write_outputs(doc: dict, command: str) -> None:
    REPORT.write_text(render(doc, command))
    plot(doc, FIGURE)
    print(f"wrote {REPORT.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")


# ----------------------------------------------------------------------------------------------------
# main


def parse_list(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        sys.exit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def run_model(spec: ModelSpec, methods: list[str], fractions: list[float], doc: dict, redo: bool) -> None:
    """Measure every missing cell of one model, saving the cache after each."""
    print(f"{spec.key}:", flush=True)
    data = prepare(spec, require_shared())
    if spec.key not in doc["originals"] or redo:
        doc["originals"][spec.key] = original_cell(data)
        save_cells(doc)
    print(f"  original top-1 {100 * doc['originals'][spec.key]['top1']:.2f} %", flush=True)
    runner = None
    for method in methods:
        for target in fractions:
            key = cell_key(spec.key, method, target)
            if key in doc["cells"] and not redo:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                if method in ONNXSIM:
                    runner = runner or OnnxsimRunner(data)
                    cell = runner.cell(method, target, Path(tmp))
                else:
                    cell = onnxprune_cell(data, method, target, Path(tmp))
            doc["cells"][key] = {**cell, **stamp()}
            save_cells(doc)
            print(f"  {method:<14} {target:<5g} {cell_text(cell)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="top-1 versus FLOPs kept: onnxprune methods and onnxsim pruning")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS), help="FLOPs kept, comma list")
    ap.add_argument("--redo", action="store_true", help="measure the selected cells again even when cached")
    ap.add_argument("--render-only", action="store_true", help="only write RESULTS.md and the figure from the cache")
    args = ap.parse_args(argv)
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = load_cells()
    if not args.render_only:
        require_shared()
        models = parse_list(args.models, MODELS, "model")
        methods = parse_list(args.methods, METHODS, "method")
        try:
            fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
        except ValueError:
            sys.exit(f"--fractions expects numbers, got {args.fractions!r}")
        if not fractions or not all(0 < f <= 1 for f in fractions):
            sys.exit("--fractions must lie in (0, 1]")
        for model in models:
            run_model(MODELS[model], methods, fractions, doc, args.redo)
    if not doc["cells"] and not doc["originals"]:
        sys.exit(f"nothing measured yet: {CELLS.relative_to(ROOT)} is empty or absent")
    write_outputs(doc, command.strip())


if __name__ == "__main__":
    main()
