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

if TYPE_CHECKING:
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


def cpu_cores() -> int:
    """CPU cores this process may use (the default intra-op thread count of the benchmarks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
                 help="Resize images to H x W pixels (default: the model's static size)."),
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
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Samples per ONNX Runtime call during calibration (a fixed model batch size wins)."),
    click.option("--max-positions", type=click.IntRange(min=0), default=256, show_default=True,
                 help="Spatial positions sampled at random per sample and layer for the statistics (0 = all)."),
)

exclude_option = click.option(
    "--exclude", multiple=True, metavar="PATTERN",
    help="Leave alone every channel group that a node whose name matches PATTERN (shell-style, e.g. '/layer1/*') "
         "writes or reads. Repeatable; calibrate and the compress run that reads its statistics take the same ones.")

provider_option = click.option(
    "--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
    help="ONNX Runtime execution provider used for calibration and verification.")

bench_runs_option = click.option(
    "--bench-runs", type=click.IntRange(min=1), metavar="N",
    help="Timed runs per model and batch size of the latency measurement. [default: 50]")

html_option = click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), metavar="FILE",
    help="Also write a self-contained HTML report with plots (PNGs embedded; needs matplotlib: "
         "pip install 'onnxprune[plot]').")


def calibration_settings(batch_size: int, max_positions: int, seed: int, provider: str = "cpu") -> CalibrationSettings:
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
                   bgr: bool) -> ImageOptions:
    """The values of ``image_options`` as the library's ImageOptions."""
    return ImageOptions(
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
