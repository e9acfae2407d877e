"""``onnxprune compress``: prune a model with calibration data and write the smaller model."""
from __future__ import annotations

import dataclasses

import click

from onnxprune.atomic import check_destination, write_text_atomic
from onnxprune.bench.compare import BenchSettings
from onnxprune.bench.measure import DEFAULT_RUNS
from onnxprune.cli.options import (bench_runs_option, calibration_settings, check_figure_output, data_option, echo,
                                   exclude_option, executor_for, expand_paths, fidelity_option, html_option,
                                   backend_option, image_options, image_settings, memory_budget_option, parse_batches,
                                   parse_fraction, progress_factory,
                                   provider_option, ray_options, sampling_options,
                                   augment_options, augmentation, show_progress, write_json)
from onnxprune.compress import CompressOptions, compress as run_compress, default_output
from onnxprune.distil import DistilSettings
from onnxprune.errors import UsageError
from onnxprune.latency import LatencyTarget
from onnxprune.plan import METHODS, AllocationSettings, SolverSettings, Target
from onnxprune.report import render_summary
from onnxprune.reporting.pages import compress_page
from onnxprune.runtime import cpu_cores


@click.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the pruned model. Default: MODEL.pruned.onnx beside the input.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists (never the input model).")
@click.option("--write-unchanged", is_flag=True,
              help="Write OUTPUT even when no channel group is prunable (by default nothing is written then).")
@click.option("--target-flops", metavar="F",
              help="Fraction of the original multiply-adds (Conv, ConvTranspose, Gemm, MatMul at batch 1) to keep, "
                   "0 < F <= 1, e.g. 0.5 or 50%. Reached within 2 % (from below).")
@click.option("--target-params", metavar="F",
              help="Fraction of the original float parameters to keep, 0 < F <= 1, e.g. 0.5 or 50%.")
@click.option("--target-latency", metavar="F",
              help="Keep at most this fraction of the original's latency on --provider (0 < F <= 1, e.g. 0.6), "
                   "alone or besides --target-flops/--target-params (both then hold). Latency is predicted from "
                   "per-layer kernel times that onnxruntime's profiler measures on thinned copies of the model (the "
                   "original and 8 copies, 3 rounds of --latency-runs runs each; seconds), convolutions by their "
                   "channels in and out, element-wise ops and re-orders by the channels of their tensor, so channels "
                   "are cut where they cost time on that backend, not only multiply-adds. The pruned graph is then "
                   "timed against the original (wall clock, interleaved rounds) and pruned again (at most twice, four "
                   "times once a try met F and another missed it) when it misses F by more than the timing noise, or "
                   "meets it by more than the noise and 0.02; the summary shows predicted and measured.")
@click.option("--latency-batch", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Batch size (samples per run) at which --target-latency is measured and met.")
@click.option("--latency-runs", type=click.IntRange(min=1), default=10, show_default=True, metavar="N",
              help="Profiled runs per thinned copy and round for --target-latency (after 5 warm-up runs).")
@click.option("--target-fidelity", type=float, metavar="A",
              help="Instead of a budget: prune as far as the held-out fidelity with the original stays >= A "
                   "(0 < A <= 1), by bisection over the FLOPs budget (about 7 re-fits; slower). Needs --holdout > 0. "
                   "The figure is the --fidelity kind's headline: top-1 agreement (classes), share of identical "
                   "decoded sequences (sequence), IoU or per-pixel agreement (dense), box F1 (yolo); "
                   "1 - relative output error otherwise.")
@fidelity_option
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
@click.option("--activation-passes", type=click.IntRange(min=0), default=1, show_default=True, metavar="N",
              help="Error-correcting re-fit: passes per stage that re-fit a layer whose output (or the residual sum "
                   "it writes into) goes through a ReLU or Clip (directly, or through per-channel BatchNormalization, "
                   "Mul and Add nodes) to what the activation lets through: where the "
                   "original is clipped, only outputs that cross the bound count. Each pass re-runs the stage's "
                   "layers over the calibration data; 0 fits the outputs before the activation by plain least "
                   "squares.")
@click.option("--residual-power", type=click.FloatRange(min=0.0), metavar="P",
              help="Allocation, expert: a layer that writes into a residual sum has its error weighted by "
                   "(its output energy / the sum's energy)**P. Default: 2 where a ReLU rectifies the sum "
                   "(post-activation ResNet blocks; 3 with --target-latency), 1 where the stream stays linear "
                   "(inverted residuals). 0 "
                   "ignores residual structure; lower values prune the residual stream more readily.")
@click.option("--output-weight", type=click.FloatRange(min=0.0), default=2.0, show_default=True, metavar="W",
              help="Allocation, expert: weight of the error of a layer that no Conv/Gemm/MatMul follows (the "
                   "classifier); no later re-fit can absorb it. 1 treats it like any other layer.")
@click.option("--wide-head-weight", type=click.FloatRange(min=0.0), default=32.0, show_default=True, metavar="W",
              help="Allocation, expert: --output-weight for such a last layer with 1000 or more outputs (a wide "
                   "class head: ImageNet classes, CTC characters), whose top class survives less of its error.")
@click.option("--near-output-weight", type=click.FloatRange(min=0.0), default=None, metavar="W",
              help="Allocation, expert: weight of the error of a layer that only such last layers follow (a text "
                   "detector head's first ConvTranspose, a YOLO class branch's middle conv); only their re-fit can "
                   "absorb it. Default: --output-weight where the first output is a dense map or detections (as "
                   "--fidelity auto judges it), else 1 (class scores, sequences).")
@click.option("--allocate-by", type=click.Choice(["layers", "outputs"]), default="layers", show_default=True,
              help="Allocation: weigh each group by its consumers' re-fit errors (layers), or by those scaled by "
                   "its measured reach to the model's outputs (outputs: each group cut alone to half its channels, "
                   "the thinned model run on 16 held-out or calibration samples; one rewrite and run per group).")
@click.option("--min-keep", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True, metavar="F",
              help="Keep at least this share of every group's channels (0..1) when thinning a group; only a whole "
                   "residual branch can drop to zero (see --depth).")
@click.option("--depth/--no-depth", default=None,
              help="Whether the allocation may remove a whole residual branch (a ResNet block's two convolutions, a "
                   "MobileNetV2 block) where that costs less error per unit saved than thinning it: its layers "
                   "disappear and the Add passes the shortcut on alone. Default: yes (ResNet-56 at half its "
                   "latency, batch 64: 76.9 % top-1 instead of 68.3 %; at half its multiply-adds 80.73 % instead of "
                   "80.64 %). The summary and the report list removed blocks.")
@click.option("--shortcut-convs/--no-shortcut-convs", default=None,
              help="Write each channel-padding shortcut (strided Slice and a zero Pad of the channel axis, as in the "
                   "option-A shortcuts of CIFAR ResNets) as one 1x1 convolution with 0/1 weights: the same values, "
                   "which onnxruntime's CPU provider computes in its blocked layout, so that the residual stream and "
                   "its fused Add and ReLU stay in it (ResNet-56: 0.2 % more multiply-adds, counted within the "
                   "target). Default: with the cpu provider and --target-flops, --target-latency or "
                   "--target-fidelity, as --round-to. The summary notes them; the report lists them.")
@click.option("--keep-subnormals", is_flag=True,
              help="Keep float32 weights below 1.2e-38 (subnormal) as they are. By default the pruned model has them "
                   "set to zero: the same outputs, and onnxruntime's CPU kernels run them many times slower (the "
                   "PP-OCRv5 text detector as exported: 71.7 ms at batch 1, 46.1 ms with them at zero). The summary "
                   "notes how many; the report has subnormals_flushed.")
@click.option("--round-to", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep a multiple of N channels in every group whose size is a multiple of N (e.g. 8 for Tensor "
                   "Cores and TensorRT); the target is still met within 2 %. Default: on the cpu provider with "
                   "--target-flops, --target-latency or --target-fidelity, the channel block of onnxruntime's CPU convolutions (16 with "
                   "AVX-512, 8 with AVX2; ONNXPRUNE_CPU_BLOCK sets another CPU's) with --allow-below: other counts are "
                   "padded to the block or fall back to slower kernels (README 'Counts the CPU runs fast'); elsewhere "
                   "1. --round-to 1 keeps exact counts.")
@click.option("--allow-below", is_flag=True,
              help="With --round-to N, also allow any count below N (onnxruntime's CPU kernels read fewer than N "
                   "input channels without padding), except in a group a depthwise convolution reads (it leaves the "
                   "blocked layout below N); part of the cpu default.")
@exclude_option
@image_options
@sampling_options
@augment_options
@provider_option
@click.option("--stats", "stats_files", multiple=True, callback=expand_paths, metavar="FILE",
              help="Sum these statistics files of 'onnxprune calibrate --shard K/N' (repeat it, or give a glob such "
                   "as 'stats_*.npz') instead of the first calibration pass. The error-correcting re-fit still "
                   "reads --data; with --independent the files replace all calibration.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Keep the first-pass statistics in DIR, keyed by model, data, split and calibration options, "
                   "and the channel rankings made on them (keyed also by the solver options), so that another run "
                   "(e.g. another target) skips the calibration pass and the solve.")
@memory_budget_option
@backend_option
@click.option("--distil", "distil_epochs", type=click.IntRange(min=0), default=0, show_default=True, metavar="EPOCHS",
              help="After the rewrite, tune the pruned model's Conv/Gemm/MatMul weights for EPOCHS passes over the "
                   "calibration samples so that its outputs follow the original's (no labels; kept only if the loss "
                   "on the held-out samples goes down). Needs torch (pip install \"onnxprune[torch]\"); about "
                   "3 forward passes of the pruned model per sample and epoch. 0: off.")
@click.option("--distil-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              metavar="RATE", help="Adam's learning rate for --distil at its start (it decays to 0 by a cosine).")
@ray_options
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON to this file.")
@click.option("--bench", is_flag=True,
              help="After compressing, measure the latency of the original and the pruned model on --provider "
                   "(as onnxprune bench does) and add it to the summary and the report.")
@click.option("--bench-batch", multiple=True, callback=parse_batches, metavar="N[,N...]",
              help="Batch sizes of --bench (implies --bench). [default: 1,8]")
@bench_runs_option
@html_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summary (errors still go to stderr).")
@click.option("-v", "--verbose", is_flag=True, help="List every group in the summary, with why untouched ones were left alone; on an "
                                                  "internal error, print its traceback.")
def compress(model, data, output, force, write_unchanged, target_flops, target_params, target_latency, latency_batch,
             latency_runs, target_fidelity, fidelity, method, rho, tau, threshold, ridge, no_refit,
             independent, activation_passes, residual_power, output_weight, wide_head_weight, near_output_weight, allocate_by, min_keep, depth, shortcut_convs, keep_subnormals, round_to, allow_below, exclude, image_size, raw_pixels, mean, std, layout, bgr, resize, pad_value, size_multiple, num_samples, holdout, seed, batch_size, max_positions, score_positions, augment, augment_ops,
             provider, stats_files, cache_dir, memory_budget, backend, distil_epochs, distil_lr, report_path, bench, bench_batch, bench_runs, html_path, quiet, verbose,
             ray_address=None, ray_ship_data=False) -> None:
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
    delta = None if ridge == "auto" else _parse_ridge(ridge)
    image = image_settings(image_size, raw_pixels, mean, std, layout, bgr, resize, pad_value, size_multiple)
    check_figure_output(html_path, "--html", "report.html")
    if report_path:
        check_destination(report_path, "--report", "report.json")
    bench_settings = None
    if bench or bench_batch or bench_runs is not None:
        bench_settings = BenchSettings(batches=tuple(bench_batch or (1, 8)), runs=bench_runs or DEFAULT_RUNS,
                                       threads=cpu_cores())
    options = CompressOptions(
        target=target,
        solver=SolverSettings(method=method, rho=rho, tau=tau, theta=threshold, delta=delta, refit=not no_refit, seed=seed,
                              residual_power=residual_power, output_weight=output_weight,
                              wide_head_weight=wide_head_weight, near_output_weight=near_output_weight,
                              activation_passes=activation_passes),
        calibration=calibration_settings(batch_size, max_positions, seed, provider),
        image=image,
        num_samples=num_samples,
        holdout=holdout,
        independent=independent,
        bench=bench_settings,
        stats_files=stats_files,
        cache_dir=cache_dir,
        allocation=AllocationSettings(min_keep=min_keep, round_to=round_to, allow_below=allow_below, depth=depth),
        exclude=tuple(exclude),
        target_fidelity=target_fidelity,
        fidelity=fidelity,
        latency=None if target_latency is None else LatencyTarget(
            parse_fraction(target_latency, "--target-latency"), latency_batch, cpu_cores(), latency_runs),
        memory_budget=memory_budget,
        backend=backend,
        augment=augmentation(augment, augment_ops), score_positions=score_positions,
        allocate_by=allocate_by,
        distil=DistilSettings(epochs=distil_epochs, learning_rate=distil_lr, seed=seed),
        shortcut_convs=shortcut_convs,
        flush_subnormals=not keep_subnormals,
    )
    out = output or str(default_output(model))
    with executor_for(ray_address, ray_ship_data, provider) as executor:
        result = run_compress(model, data, dataclasses.replace(options, executor=executor), output=out, force=force,
                              progress=progress_factory(show_progress(quiet)), write_unchanged=write_unchanged)
    if report_path:
        write_json(report_path, result.report.to_dict())
    if html_path:
        write_text_atomic(html_path, compress_page(result.report))
    echo(render_summary(result.report, verbose=verbose), quiet)
    if result.report.output is None:
        click.echo(f"onnxprune: nothing to prune in {model}: every channel group is frozen; no output written. "
                   "Note: 'onnxprune analyze' shows why; --write-unchanged writes a copy anyway.", err=True)
    else:
        echo(f"wrote {out}", quiet)


def _parse_ridge(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--ridge expects 'auto' or a non-negative number, got '{text}'.") from None
    if value < 0:
        raise UsageError(f"--ridge must be non-negative, got {value}.")
    return value
