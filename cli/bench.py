"""``onnxprune bench``: latency, throughput and memory of one or more models, side by side."""
from __future__ import annotations

import click

from onnxprune.bench.measure import DEFAULT_ROUNDS, DEFAULT_RUNS
from onnxprune.cli.options import (check_figure_output, html_option, parse_batches, show_progress, split_list,
                                   traceback_option)
from onnxprune.errors import UsageError
from onnxprune.runtime import cpu_cores

_PROVIDERS = ("cpu", "cuda", "tensorrt")


def _providers(ctx, param, values) -> list[str]:
    names = [v.lower() for v in split_list(values)] or ["cpu"]
    for name in names:
        if name not in _PROVIDERS:
            raise UsageError(f"unknown --provider '{name}'.", note=f"choose from {', '.join(_PROVIDERS)}")
    return list(dict.fromkeys(names))


def _at_least(minimum: float, what: str):
    def check(ctx, param, value):
        if value is not None and value < minimum:
            unit = f" {what}" if what else ""
            raise UsageError(f"--{param.name.replace('_', '-')} must be >= {minimum:g}{unit}, got {value:g}{unit}.")
        return value

    return check


@click.command("bench")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--provider", "providers", multiple=True, callback=_providers, metavar="NAME",
              help="Execution provider: cpu, cuda or tensorrt. Repeat it or separate with commas to "
                   "measure several. [default: cpu]")
@click.option("--batch", "batches", multiple=True, default=["1"], callback=parse_batches, metavar="N[,N...]",
              help="Batch sizes (samples per run), e.g. 1,8,64. A model with a fixed batch dim is "
                   "reported as 'fixed batch N' for other sizes. [default: 1]")
@click.option("--runs", type=int, default=None, callback=_at_least(1, ""), metavar="N",
              help="Timed runs per configuration (model x provider x batch). [default: 50]")
@click.option("--seconds", type=float, default=None, callback=_at_least(1e-3, "seconds"), metavar="S",
              help="Instead of --runs: time budget in seconds of timed runs per configuration.")
@click.option("--warmup", type=int, default=10, show_default=True, callback=_at_least(0, ""), metavar="N",
              help="Untimed warm-up runs per configuration before timing.")
@click.option("--rounds", type=int, default=DEFAULT_ROUNDS, show_default=True, callback=_at_least(1, ""), metavar="N",
              help="Split the timed runs of every configuration into N rounds, each a fresh process with its "
                   "own warm-up, interleaved (round 1 of every model, then round 2, ...), so that a machine "
                   "whose speed drifts slows every model alike; percentiles pool the runs of all rounds.")
@click.option("--threads", type=int, default=None, callback=_at_least(0, ""), metavar="N",
              help="Intra-op threads of onnxruntime (0: onnxruntime's own default); inter-op threads are "
                   "always 1. [default: the number of CPU cores available]")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS",
              help="Size of an input with dynamic dims, in elements, e.g. input:1x3x224x224 (repeatable). "
                   "The first dim is replaced by --batch when it is dynamic.")
@click.option("--allow-fallback", is_flag=True,
              help="Run on CPU (and say so in the results) when a requested GPU provider is unavailable, "
                   "instead of failing with exit code 5.")
@click.option("--trt-fp16", is_flag=True, help="TensorRT: allow FP16 kernels.")
@click.option("--trt-cache", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="TensorRT: folder for the engine and timing caches (reused across runs).")
@click.option("--trt-workspace", type=float, default=None, callback=_at_least(0.001, "GB"), metavar="GB",
              help="TensorRT: maximum workspace size in GiB (2^30 bytes).")
@click.option("--device-id", type=int, default=0, show_default=True, callback=_at_least(0, ""), metavar="N",
              help="GPU index for cuda and tensorrt.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write all results to FILE as JSON (latencies in ms, throughput in samples/s, "
                   "sizes in bytes and MB); written atomically.")
@html_option
@click.option("-q", "--quiet", is_flag=True, help="No progress or notes on stderr; only the table on stdout.")
@traceback_option
def bench(models, providers, batches, runs, seconds, warmup, rounds, threads, shapes, allow_fallback, trt_fp16,
          trt_cache, trt_workspace, device_id, json_path, html_path, quiet) -> None:
    """Measure latency (p50/p90/p99 ms), throughput (samples/s) and peak memory of MODELs.

    Every (model, provider, batch) runs in ROUNDS fresh processes, interleaved with the other models:
    each makes WARMUP untimed runs, then its share of the RUNS timed runs of session.run on prepared
    random inputs. With two models or more, ratio columns compare each model with
    the first one, e.g. onnxprune bench model.onnx model.pruned.onnx --batch 1,32.
    """
    from onnxprune.bench import benchmark_models, format_table, resolve_providers, to_document
    from onnxprune.bench.results import check_json_path, write_json

    if runs is not None and seconds is not None:
        raise UsageError("give --runs or --seconds, not both.")
    if json_path is not None:
        check_json_path(json_path)
    check_figure_output(html_path, "--html", "bench.html")
    threads = cpu_cores() if threads is None else threads

    def say(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    if "tensorrt" not in providers and (trt_fp16 or trt_cache or trt_workspace):
        say("onnxprune: note: --trt-* options apply to --provider tensorrt only; ignored.")
    specs = resolve_providers(
        providers, allow_fallback=allow_fallback, trt_fp16=trt_fp16, trt_cache_dir=trt_cache,
        trt_workspace_gb=trt_workspace, device_id=device_id,
    )
    for spec in specs:
        if spec.fallback_reason:
            say(f"onnxprune: note: {spec.requested} requested but {spec.fallback_reason}; running on CPU (--allow-fallback).")

    progress = say if show_progress(quiet) else None
    results = benchmark_models(
        list(models), providers=specs, batches=batches, runs=runs, seconds=seconds, warmup=warmup,
        threads=threads, shapes=list(shapes), rounds=rounds, progress=progress,
    )
    click.echo(format_table(results), nl=False)

    if json_path is not None:
        settings = {
            "providers": list(providers),
            "batches": list(batches),
            "runs": runs if runs is not None or seconds is not None else DEFAULT_RUNS,
            "seconds": seconds,
            "warmup_runs": warmup,
            "rounds": rounds,
            "threads": threads,
            "inter_op_threads": 1,
            "shapes": list(shapes),
            "allow_fallback": allow_fallback,
            "provider_options": [spec.to_dict() for spec in specs],
        }
        out = write_json(json_path, to_document(results, settings))
        say(f"onnxprune: wrote {out}")
    if html_path is not None:
        from onnxprune.atomic import write_text_atomic
        from onnxprune.reporting.pages import bench_page

        write_text_atomic(html_path, bench_page(results))
        say(f"onnxprune: wrote {html_path}")
