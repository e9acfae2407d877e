"""``onnxprune analyze``: show a model's channel groups and what blocks the others, without data."""
from __future__ import annotations

import click

from onnxprune.cli.options import write_json
from onnxprune.inspect import analyze_model, render_groups


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the groups as JSON to this file.")
@click.option("-v", "--verbose", is_flag=True, help="List every member node of each group.")
def analyze(model, json_path, verbose) -> None:
    """Print MODEL's channel groups: members, channels, share of multiply-adds, and why frozen ones are frozen."""
    summary = analyze_model(model)
    if json_path:
        write_json(json_path, summary)
    click.echo(render_groups(summary, verbose=verbose))
