"""``onnxprune compress``: prune a model with calibration data and write the smaller model."""
from __future__ import annotations

import click

from onnxprune.calibration.collect import CalibrationSettings
from onnxprune.calibration.sources import ImageOptions, parse_floats, parse_image_size
from onnxprune.cli.options import echo, parse_fraction, progress_factory, show_progress, write_json
from onnxprune.compress import CompressOptions, compress as run_compress, default_output
from onnxprune.errors import UsageError
from onnxprune.plan import METHODS, SolverSettings, Target
from onnxprune.report import render_summary


@click.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, type=click.Path(),
              help="Calibration data: an .npz file or folder of .npz (arrays keyed by input name, batch-first), "
                   "a folder of .npy (single-input models), or a folder of images (jpg/png/bmp, recursive; "
                   "class sub-folders give labels).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the pruned model. Default: MODEL.pruned.onnx beside the input.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists (never the input model).")
@click.option("--target-flops", metavar="F",
              help="Fraction of the original multiply-adds (Conv, ConvTranspose, Gemm, MatMul at batch 1) to keep, "
                   "0 < F <= 1, e.g. 0.5 or 50%. Reached within 2 % (from below).")
@click.option("--target-params", metavar="F",
              help="Fraction of the original float parameters to keep, 0 < F <= 1, e.g. 0.5 or 50%.")
@click.option("--method", type=click.Choice(METHODS), default="entropic", show_default=True,
              help="How channels are ranked: entropic regression, L1/L2 weight norm, random, or activation "
                   "(weight norm x input activation RMS, as in Wanda).")
@click.option("--rho", type=float, default=1.0, show_default=True,
              help="Entropic sparsity (dimensionless; larger keeps fewer channels when no target is given).")
@click.option("--tau", type=float, default=1e-3, show_default=True,
              help="Entropic temperature (dimensionless, relative to the output energy).")
@click.option("--threshold", type=float, default=1e-2, show_default=True,
              help="Without a target, keep channel d when D*w_d >= THRESHOLD (D = channels in the group).")
@click.option("--ridge", default="auto", show_default=True, metavar="auto|DELTA",
              help="Re-fit regularisation. auto: shrink towards the original weights with the ridge chosen by "
                   "generalised cross-validation (robust when a layer sees few rows, e.g. a Gemm after Flatten). "
                   "A number DELTA: plain ridge re-fit with lambda = DELTA * trace(G)/p.")
@click.option("--no-refit", is_flag=True, help="Only remove channels; keep the remaining weights as they were.")
@click.option("--independent", is_flag=True,
              help="Take every layer's statistics from the original network (the paper's mode) instead of the "
                   "default error-correcting re-fit (inputs from the pruned network, targets from the original).")
@click.option("--image-size", metavar="H[,W]", help="Resize images to H x W pixels (default: the model's static size).")
@click.option("--raw-pixels", is_flag=True, help="Keep pixel values in 0..255 instead of scaling them to [0, 1].")
@click.option("--mean", metavar="R,G,B", help="Per-channel mean subtracted after scaling (one value or three).")
@click.option("--std", metavar="R,G,B", help="Per-channel standard deviation divided after the mean.")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), help="Image tensor layout (default: inferred from the input shape).")
@click.option("--bgr", is_flag=True, help="Feed images in BGR channel order.")
@click.option("--num-samples", type=click.IntRange(min=1), metavar="N", help="Use at most N samples (default: all).")
@click.option("--holdout", type=float, default=0.1, show_default=True,
              help="Share of the samples kept out of calibration to measure fidelity (seeded, 0 disables).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the hold-out split, position sampling and random ranking.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Samples per ONNX Runtime call during calibration (a fixed model batch size wins).")
@click.option("--max-positions", type=click.IntRange(min=0), default=256, show_default=True,
              help="Spatial positions sampled at random per sample and layer for the statistics (0 = all).")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider used for calibration and verification.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary (errors still go to stderr).")
@click.option("-v", "--verbose", is_flag=True, help="List every group in the summary, with why untouched ones were left alone.")
def compress(model, data, output, force, target_flops, target_params, method, rho, tau, threshold, ridge, no_refit,
             independent, image_size, raw_pixels, mean, std, layout, bgr, num_samples, holdout, seed, batch_size, max_positions,
             provider, report_path, quiet, verbose) -> None:
    """Prune the channels of MODEL that matter least and re-fit the rest from calibration data.

    Example: onnxprune compress model.onnx --data calib/ --target-flops 0.5 -o model.pruned.onnx
    """
    if target_flops is not None and target_params is not None:
        raise UsageError("give either --target-flops or --target-params, not both.")
    target = None
    if target_flops is not None:
        target = Target("flops", parse_fraction(target_flops, "--target-flops"))
    elif target_params is not None:
        target = Target("params", parse_fraction(target_params, "--target-params"))
    if not 0.0 <= holdout < 1.0:
        raise UsageError(f"--holdout must be in [0, 1), got {holdout}.")
    delta = None if ridge == "auto" else _parse_ridge(ridge)
    image = ImageOptions(
        size=parse_image_size(image_size) if image_size else None,
        raw_pixels=raw_pixels,
        mean=parse_floats(mean, "--mean") if mean else None,
        std=parse_floats(std, "--std") if std else None,
        layout=layout,
        bgr=bgr,
    )
    options = CompressOptions(
        target=target,
        solver=SolverSettings(method=method, rho=rho, tau=tau, theta=threshold, delta=delta, refit=not no_refit, seed=seed),
        calibration=CalibrationSettings(batch_size=batch_size, max_positions=max_positions or None, seed=seed, provider=provider),
        image=image,
        num_samples=num_samples,
        holdout=holdout,
        independent=independent,
    )
    out = output or str(default_output(model))
    result = run_compress(model, data, options, output=out, force=force, progress=progress_factory(show_progress(quiet)))
    if report_path:
        write_json(report_path, result.report.to_dict())
    echo(render_summary(result.report, verbose=verbose), quiet)
    echo(f"wrote {out}", quiet)


def _parse_ridge(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--ridge expects 'auto' or a non-negative number, got '{text}'.") from None
    if value < 0:
        raise UsageError(f"--ridge must be non-negative, got {value}.")
    return value
