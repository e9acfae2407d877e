"""Option parsing and progress display shared by the subcommands (each option defined once)."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import click

from onnxprune.calibration.sources import ImageOptions, parse_floats, parse_image_size
from onnxprune.errors import UsageError
from onnxprune.solvers.backend import BACKENDS, Backend, BackendError, resolve

if TYPE_CHECKING:
    from onnxprune.calibration.augment import Augmentation
    from onnxprune.calibration.collect import CalibrationSettings


def parse_fraction(text: str | None, option: str) -> float | None:
    """'0.5' or '50%' → 0.5; UsageError unless 0 < F ≤ 1."""
    if text is None:
        return None
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{option} expects a fraction like 0.5 or 50%, got '{text}'.") from None
    if not 0.0 < value <= 1.0:
        raise UsageError(f"{option} must be in (0, 1] (or 0–100%), got '{text}'.")
    return value


def progress_factory(enabled: bool):
    """A progress-bar factory for the library (click bars on stderr), or None for no bars."""
    if not enabled:
        return None

    @contextlib.contextmanager
    def factory(label: str, total: int) -> Iterator:
        with click.progressbar(length=max(total, 1), label=f"{label:<12}", file=sys.stderr, show_eta=True,
                               show_pos=True) as bar:
            yield bar

    return factory


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def write_json(path: str, payload: dict) -> None:
    """Write a JSON report atomically."""
    from onnxprune.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def echo(text: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(text)


def split_list(values: Sequence[str]) -> list[str]:
    """Items of a repeatable, comma-separated option: ('1,8', '64') → ['1', '8', '64']."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_batches(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[int]:
    """Callback of a repeatable batch-size list option (``--batch 1,8,64``); [] when not given."""
    option = param.opts[-1]
    out = []
    for part in split_list(values):
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"{option} '{part}' is not a positive integer.",
                             note=f"write batch sizes as {option} 1,8,64")
        out.append(int(part))
    return list(dict.fromkeys(out))


def _stacked(*options: Callable) -> Callable:
    """One decorator applying click ``options`` in the order listed, as if written one above the other."""
    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _check_holdout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--holdout must be in [0, 1), got {value}.")
    return value


data_option = click.option(
    "--data", "data", required=True, type=click.Path(),
    help="Calibration data: an .npz file or folder of .npz (arrays keyed by input name, batch-first), "
         "a folder of .npy (single-input models), or a folder of images (jpg/png/bmp, recursive; "
         "class sub-folders give labels).")

image_options = _stacked(
    click.option("--image-size", metavar="H[,W]",
                 help="Resize images to H x W pixels (default: the model's static size). With --resize keep-ratio, "
                      "H is the height and W the maximum width."),
    click.option("--resize", type=click.Choice(["stretch", "letterbox", "keep-ratio"]), default="stretch",
                 show_default=True,
                 help="How images are fitted to --image-size H,W (bilinear). stretch: resized to H x W. letterbox "
                      "(ultralytics/YOLO): scaled to fit inside H x W keeping the aspect ratio, centred, borders "
                      "padded with --pad-value; needs --image-size when the model's H/W are dynamic. keep-ratio "
                      "(PaddleOCR recogniser): height H, width ceil(H*w/h) rounded up to --size-multiple and capped "
                      "at W, right-padded with --pad-value to W (to the widest image of the data set when the "
                      "model's width is dynamic and --image-size is not given)."),
    click.option("--pad-value", type=float, metavar="V",
                 help="Pixel value of the padding in 0..255 units (a float), before the /255 scaling and "
                      "--mean/--std, like the image's own pixels (127.5 becomes 0 with --mean 0.5 --std 0.5). "
                      "Default: 114 with letterbox (ultralytics' grey); with keep-ratio the value that becomes 0 "
                      "after normalisation, as PaddleOCR pads (mean*255; 0 without --mean)."),
    click.option("--size-multiple", type=int, metavar="N",
                 help="Pixels. keep-ratio: round each resized width up to a multiple of N before the cap at W "
                      "(e.g. 4 or 8 for text recognisers). letterbox: round the H x W canvas up to multiples of N "
                      "(e.g. 32, the detector's stride), as ultralytics rounds imgsz. [default: 1]"),
    click.option("--raw-pixels", is_flag=True, help="Keep pixel values in 0..255 instead of scaling them to [0, 1]."),
    click.option("--mean", metavar="R,G,B", help="Per-channel mean subtracted after scaling (one value or three)."),
    click.option("--std", metavar="R,G,B", help="Per-channel standard deviation divided after the mean."),
    click.option("--layout", type=click.Choice(["nchw", "nhwc"]),
                 help="Image tensor layout (default: inferred from the input shape)."),
    click.option("--bgr", is_flag=True, help="Feed images in BGR channel order."),
)

sampling_options = _stacked(
    click.option("--num-samples", type=click.IntRange(min=1), metavar="N",
                 help="Use at most N samples (default: all)."),
    click.option("--holdout", type=float, default=0.1, show_default=True, callback=_check_holdout,
                 help="Share of the samples kept out of calibration to measure fidelity (seeded, 0 disables)."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed for the hold-out split, position sampling and random ranking."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Samples per ONNX Runtime call during calibration (default: 32, fewer where the inputs and "
                      "outputs of one call's Conv/Gemm/MatMul layers would pass 256 MB; a fixed model batch size "
                      "wins)."),
    click.option("--max-positions", type=click.IntRange(min=0), default=256, show_default=True,
                 help="Spatial positions sampled at random per sample and layer for the statistics (0 = all)."),
    click.option("--score-positions/--no-score-positions", default=True, show_default=True,
                 help="Layers of a detection head's class branch (convs whose scores reach, through a Sigmoid, a "
                      "graph output that lists candidates) sample their positions where the original model's "
                      "scores are high, background kept at a floor; --no-score-positions samples them uniformly."),
)

augment_options = _stacked(
    click.option("--augment", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
                 help="Add N seeded, transformed copies of every calibration sample to the statistics (more "
                      "statistics from few images; held-out samples are never copied). Image inputs only."),
    click.option("--augment-ops", default="flip,crop", show_default=True, metavar="OPS",
                 help="What --augment does to each copy, comma-separated: flip (horizontal, half of the copies), "
                      "mirror (horizontal, every copy), "
                      "crop (56-100% of the area, aspect 4:5-5:4, resized back), scale (shrunk to 70-100% of the "
                      "sides and placed at random on the border's mean colour)."),
)


def augmentation(copies: int, ops: str) -> Augmentation:
    """The values of ``augment_options`` as the library's Augmentation."""
    from onnxprune.calibration.augment import Augmentation, parse_ops

    return Augmentation(copies, parse_ops(ops))


def _parse_size(ctx, param, value: str | None) -> int | None:
    """Callback of a size option: bytes, or a number with a unit K, M, G, T (powers of 1024; KiB/KB/k alike)."""
    if value is None:
        return None
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    if text and text[-1] in _UNITS:
        scale, text = _UNITS[text[-1]], text[:-1]
    try:
        size = float(text) * scale
    except ValueError:
        raise click.BadParameter(f"expected a size such as 2G, 512M or 1000000 (bytes), got '{value}'.") from None
    if not size >= 0:
        raise click.BadParameter(f"must be at least 0, got '{value}'.")
    return int(size)


_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_backend(ctx, param, value: str) -> Backend:
    """Callback of --backend: the resolved backend (torch asked for without torch installed: a one-line error)."""
    try:
        return resolve(value)
    except BackendError as exc:
        raise click.BadParameter(str(exc)) from None


backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
    callback=_parse_backend,
    help="What runs the solver's Cholesky factorisations and solves (rankings, re-fits, error curves) and "
         "calibration's Gram products: numpy (SciPy), torch (on a CUDA device where torch sees one, else on the CPU; "
         "pip install \"onnxprune[torch]\"), or auto: torch where torch sees a CUDA device, else numpy (torch's CPU "
         "factorisations took 1.3x SciPy's time). The results agree within float round-off; --ray tasks use numpy.")

memory_budget_option = click.option(
    "--memory-budget", callback=_parse_size, metavar="SIZE",
    help="Memory for the per-batch tensors the error-correcting re-fit keeps between stages (the original and the "
         "pruned network's frontier), in bytes or with a unit: 512M, 2G. Past it they go to memory-mapped files "
         "in a temporary folder ($TMPDIR), removed at the end. [default: half the memory available at the start]")

exclude_option = click.option(
    "--exclude", multiple=True, metavar="PATTERN",
    help="Leave alone every channel group that a node whose name matches PATTERN (shell-style, e.g. '/layer1/*') "
         "writes or reads. Repeatable; calibrate and the compress run that reads its statistics take the same ones.")

provider_option = click.option(
    "--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
    help="ONNX Runtime execution provider used for calibration and verification.")

ray_options = _stacked(
    click.option("--ray", "ray_address", metavar="ADDRESS",
                 help="Run the calibration passes, per-group rankings and stage re-fits as tasks on a Ray cluster "
                      "(needs pip install \"onnxprune[ray]\"): auto (RAY_ADDRESS, or the cluster 'ray start' runs here), "
                      "HOST:PORT (the head's address), or local[:N] (a Ray with N CPUs started for this run). "
                      "The output is byte-identical to a run without --ray. Every node reads --data at the same "
                      "path unless --ray-ship-data is given."),
    click.option("--ray-ship-data", is_flag=True,
                 help="With --ray: read the calibration samples here and send them to the workers through Ray's "
                      "object store, for nodes that do not see the --data path."),
)

bench_runs_option = click.option(
    "--bench-runs", type=click.IntRange(min=1), metavar="N",
    help="Timed runs per model and batch size of the latency measurement. [default: 50]")

html_option = click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
    help="Also write a self-contained HTML report with plots (PNGs embedded; needs matplotlib: "
         "pip install 'onnxprune[plot]').")


def calibration_settings(batch_size: int | None, max_positions: int, seed: int, provider: str = "cpu") -> CalibrationSettings:
    """The values of ``sampling_options`` and ``provider_option`` as the library's CalibrationSettings."""
    from onnxprune.calibration.collect import CalibrationSettings

    return CalibrationSettings(batch_size=batch_size, max_positions=max_positions or None, seed=seed, provider=provider)


def expand_paths(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple[str, ...]:
    """Callback of a repeatable file option whose values may be glob patterns (quoted, or where the shell
    left them unexpanded); UsageError for a pattern matching nothing or a file that does not exist."""
    option = param.opts[-1]
    paths: list[str] = []
    for value in values:
        pattern = not os.path.exists(value) and any(c in value for c in "*?[")
        found = sorted(glob.glob(value)) if pattern else [value]
        if not found or not all(os.path.isfile(f) for f in found):
            raise UsageError(f"{option} '{value}' {'matches no file' if pattern else 'is not a file'}.")
        paths.extend(found)
    return tuple(dict.fromkeys(paths))


def image_settings(image_size: str | None, raw_pixels: bool, mean: str | None, std: str | None, layout: str | None,
                   bgr: bool, resize: str = "stretch", pad_value: float | None = None,
                   size_multiple: int | None = None) -> ImageOptions:
    """The values of ``image_options`` as the library's ImageOptions (validated when the data is opened)."""
    return ImageOptions(
        resize=resize,
        pad_value=pad_value,
        size_multiple=1 if size_multiple is None else size_multiple,
        size=parse_image_size(image_size) if image_size else None,
        raw_pixels=raw_pixels,
        mean=parse_floats(mean, "--mean") if mean else None,
        std=parse_floats(std, "--std") if std else None,
        layout=layout,
        bgr=bgr,
    )


def check_figure_output(path: str | None, option: str, example: str) -> None:
    """Before any work: a figure or HTML output needs matplotlib and an existing, writable folder."""
    if path is None:
        return
    from onnxprune.atomic import check_destination
    from onnxprune.reporting.plots import require_matplotlib

    require_matplotlib(option)
    check_destination(path, option, example)


traceback_option = click.option("-v", "--verbose", is_flag=True, expose_value=False,
                                help="On an internal error, also print its traceback (for a bug report).")


def _fidelity_option() -> Callable:
    from onnxprune.fidelity_kinds import KINDS

    return click.option(
        "--fidelity", "fidelity", type=click.Choice(KINDS), default="auto", show_default=True,
        help="How the held-out outputs of the pruned model are judged against the original's (first output; every "
             "output also gets its relative error). classes: top-1 agreement. sequence: greedy CTC decoding "
             "(blank 0) - share of identical decoded sequences, per-step agreement, character error rate. dense: "
             "IoU of one-channel maps above 0.5 (0 for logits) pooled over all pixels, or per-pixel argmax "
             "agreement. yolo: boxes (confidence > 0.25, class-aware NMS at IoU 0.45) matched to the original's "
             "at IoU 0.5 - precision, recall, F1. auto: [N, C] -> classes; [N, T, C] after a Softmax over the last "
             "axis or a MatMul whose T grows with the input width -> sequence; [N, C, H, W] at >= 1/4 of the "
             "input's resolution -> dense; [N, 4+C, A] or [N, A, 5+C] with A >= 4x the row -> yolo; otherwise "
             "relative output error only.")


fidelity_option = _fidelity_option()


@contextlib.contextmanager
def executor_for(address: str | None, ship_data: bool, provider: str = "cpu") -> Iterator:
    """The executor of ``--ray ADDRESS`` (connected before any work, closed at the end), or None without it."""
    if address is None:
        if ship_data:
            raise UsageError("--ray-ship-data needs --ray ADDRESS.")
        yield None
        return
    from onnxprune.executor import RayExecutor

    with RayExecutor(address, gpus_per_task=1 if provider in ("cuda", "tensorrt") else 0, ship_data=ship_data) as ex:
        yield ex
