"""Option parsing and progress display shared by the subcommands (each option defined once)."""
from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator

import click

from onnxprune.errors import UsageError


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
