"""``onnxprune calibrate``: compress's first calibration pass over one shard, written to a statistics file."""
from __future__ import annotations

import dataclasses
import re

import click

from onnxprune.cli.options import (backend_option, calibration_settings, data_option, echo, exclude_option,
                                   executor_for, image_options, image_settings, progress_factory, provider_option,
                                   ray_options, sampling_options,
                                   augment_options, augmentation,
                                   show_progress, traceback_option)
from onnxprune.errors import UsageError


def parse_shard(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, int]:
    """'2/4' → (2, 4); UsageError unless 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UsageError(f"--shard expects K/N with 1 <= K <= N, got '{text}'.", note="for example --shard 1/4")
    return int(match[1]), int(match[2])


@click.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option
@click.option("-o", "--out", "output", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write the statistics (.npz, written atomically).")
@click.option("--shard", default="1/1", show_default=True, callback=parse_shard, metavar="K/N",
              help="Calibrate shard K of N: a fixed run of whole batches of the calibration samples. "
                   "'compress --stats' sums the N files.")
@click.option("--independent", is_flag=True,
              help="Keep the odd-sample fold statistics of every layer with few rows per column, as 'compress "
                   "--independent' re-fits need (without it: of such layers up to 2048 input columns, for the "
                   "error curves).")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@exclude_option
@image_options
@sampling_options
@augment_options
@provider_option
@backend_option
@ray_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@traceback_option
def calibrate(model, data, output, shard, independent, force, exclude, image_size, raw_pixels, mean, std, layout, bgr,
              resize, pad_value, size_multiple, num_samples, holdout, seed, batch_size, max_positions, score_positions,
              augment, augment_ops, provider, backend, quiet, ray_address=None, ray_ship_data=False) -> None:
    """Compute the calibration statistics of MODEL that compress's first pass collects, for one shard.

    Use the data, image and sampling options of the compress run they are for; that run then takes
    '--stats FILE...' instead of calibrating.

    Example: onnxprune calibrate model.onnx --data calib/ --shard 1/4 -o stats_1.npz
    """
    from onnxprune.calibrate import calibrate as run_calibrate
    from onnxprune.compress import CompressOptions

    options = CompressOptions(
        calibration=calibration_settings(batch_size, max_positions, seed, provider),
        image=image_settings(image_size, raw_pixels, mean, std, layout, bgr, resize, pad_value, size_multiple),
        num_samples=num_samples,
        holdout=holdout,
        independent=independent,
        exclude=tuple(exclude),
        augment=augmentation(augment, augment_ops), score_positions=score_positions, backend=backend,
    )
    with executor_for(ray_address, ray_ship_data, provider) as executor:
        header = run_calibrate(model, data, output, dataclasses.replace(options, executor=executor), shard=shard,
                               force=force, progress=progress_factory(show_progress(quiet)))
    k, n = header.shard
    echo(f"wrote {output}: shard {k}/{n}, {header.samples} of {header.total} calibration samples, "
         f"{len(header.consumers)} consumers{', with the folds of every layer' if header.folds else ''}", quiet)
