"""``onnxprune sweep``: compress at several FLOPs targets and compare fidelity and CPU latency."""
from __future__ import annotations

import dataclasses

import click

from onnxprune.cli.options import (backend_option, bench_runs_option, calibration_settings, check_figure_output,
                                   data_option, echo, executor_for, fidelity_option, html_option, image_options, image_settings,
                                   parse_fraction, ray_options, sampling_options,
                                   augment_options, augmentation, show_progress, split_list,
                                   traceback_option, write_json)
from onnxprune.runtime import cpu_cores


@click.command("sweep")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option
@click.option("--targets", default="0.9,0.7,0.5,0.35", show_default=True, metavar="F[,F...]",
              help="Fractions of the original multiply-adds to keep (0.5 or 50%); one compress run each.")
@image_options
@sampling_options
@augment_options
@click.option("--bench-batch", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Batch size of the CPU latency measurement.")
@bench_runs_option
@fidelity_option
@click.option("--out-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Keep the pruned models in this existing folder as MODEL.flopsNN.onnx (default: discarded).")
@click.option("--force", is_flag=True, help="Overwrite pruned models already in --out-dir.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the results as JSON (fractions 0-1, latency in ms).")
@html_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="PNG",
              help="Write the figure of fidelity and latency versus FLOPs kept as a PNG (needs matplotlib).")
@backend_option
@ray_options
@click.option("-q", "--quiet", is_flag=True, help="No progress and no table.")
@traceback_option
def sweep(model, data, targets, image_size, raw_pixels, mean, std, layout, bgr, resize, pad_value, size_multiple,
          num_samples, holdout, seed, batch_size, max_positions, score_positions, augment, augment_ops, bench_batch,
          bench_runs, fidelity, out_dir, force, json_path, html_path, plot_path, backend, quiet, ray_address=None,
          ray_ship_data=False) -> None:
    """Compress MODEL at each FLOPs target; table held-out fidelity and CPU latency against FLOPs kept.

    Example: onnxprune sweep model.onnx --data calib/ --targets 0.9,0.7,0.5,0.35 --html sweep.html
    """
    from onnxprune.atomic import atomic_path, check_destination, write_text_atomic
    from onnxprune.bench.measure import DEFAULT_RUNS
    from onnxprune.compress import CompressOptions
    from onnxprune.sweep import format_sweep_table, sweep as run_sweep

    fractions = [parse_fraction(part, "--targets") for part in split_list([targets])]
    if json_path:
        check_destination(json_path, "--json", "sweep.json")
    check_figure_output(html_path, "--html", "sweep.html")
    check_figure_output(plot_path, "--plot", "sweep.png")
    options = CompressOptions(
        calibration=calibration_settings(batch_size, max_positions, seed),
        image=image_settings(image_size, raw_pixels, mean, std, layout, bgr, resize, pad_value, size_multiple),
        num_samples=num_samples,
        holdout=holdout,
        fidelity=fidelity,
        augment=augmentation(augment, augment_ops), score_positions=score_positions, backend=backend,
    )
    log = (lambda line: click.echo(line, err=True)) if show_progress(quiet) else None
    with executor_for(ray_address, ray_ship_data) as executor:
        result = run_sweep(model, data, fractions, dataclasses.replace(options, executor=executor), batch=bench_batch,
                           runs=bench_runs or DEFAULT_RUNS, threads=cpu_cores(), out_dir=out_dir, force=force, log=log)
    echo(format_sweep_table(result), quiet)
    if json_path:
        write_json(json_path, result.to_dict())
    if html_path or plot_path:
        from onnxprune.reporting.pages import sweep_page
        from onnxprune.reporting.plots import sweep_png

        if html_path:
            write_text_atomic(html_path, sweep_page(result))
        if plot_path:
            with atomic_path(plot_path) as tmp:
                tmp.write_bytes(sweep_png(result))
