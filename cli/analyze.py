"""``onnxprune analyze``: show a model's channel groups and what blocks the others, without data."""
from __future__ import annotations

import click

from onnxprune.bench.inputs import parse_shape_overrides
from onnxprune.cli.options import write_json
from onnxprune.inspect import analyze_model, render_groups


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the groups as JSON to this file.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DIMS",
              help="Size of an input with symbolic dims, in elements, e.g. images:1x3x640x640 (repeatable): the "
                   "resolution the model runs at, which every layer's multiply-adds depend on. Needed when an input "
                   "has symbolic dims besides the batch (the first dim, taken as 1).")
@click.option("-v", "--verbose", is_flag=True, help="List every member node of each group; on an internal error, print its traceback.")
def analyze(model, json_path, shapes, verbose) -> None:
    """Print MODEL's channel groups: members, channels, share of multiply-adds, and why frozen ones are frozen."""
    summary = analyze_model(model, parse_shape_overrides(shapes))
    if json_path:
        write_json(json_path, summary)
    click.echo(render_groups(summary, verbose=verbose))
