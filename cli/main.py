"""The ``onnxprune`` command: a click group whose subcommands live in sibling modules."""
from __future__ import annotations

import sys
import traceback
import warnings
from typing import Callable

import click

from onnxprune import __version__
from onnxprune.errors import InternalError, OnnxPruneError, OnnxPruneWarning, UsageError


class _Group(click.Group):
    """Turns library errors into one line on stderr and a meaningful exit code, and Ctrl-C into 130; anything
    unexpected too (an internal error, exit 1), with its traceback when the command was given -v."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        ctx.meta["onnxprune.args"] = list(args)  # the subcommand's own arguments, for -v on an internal error
        return super().resolve_command(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.UsageError as exc:   # the group's own options (a subcommand's come through invoke)
            if isinstance(exc, _HELP_INSTEAD):
                raise   # no arguments at all: click prints the help
            _fail(None, _usage(exc))

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warnings(warnings.showwarning)
                return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            _fail(ctx, _usage(exc))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OnnxPruneError as exc:
            _fail(ctx, exc)
        except KeyboardInterrupt:
            click.echo("onnxprune: interrupted; no output was written.", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("onnxprune: error: out of memory. Note: lower --batch-size or --max-positions.", err=True)
            sys.exit(6)
        except Exception as exc:  # noqa: BLE001 - a bug outside any stage: still one line
            error = InternalError(f"running 'onnxprune {_command(ctx)}'", exc)
            error.__cause__ = exc
            _fail(ctx, error)


_HELP_INSTEAD = getattr(click.exceptions, "NoArgsIsHelpError", ())   # click >= 8.2


def _usage(exc: click.exceptions.UsageError) -> UsageError:
    """click's own checks of the command line (an unknown option, a value out of range) as onnxprune's: one line,
    exit 4."""
    where = exc.ctx.command_path if exc.ctx is not None else "onnxprune"
    return UsageError(exc.format_message(), note=f"see '{where} --help'")


def _fail(ctx: click.Context | None, exc: OnnxPruneError) -> None:
    """Print ``exc`` as one line (after the traceback of an internal error's cause with -v) and exit with its code."""
    if isinstance(exc, InternalError) and ctx is not None and _verbose(ctx):
        traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
    click.echo(f"onnxprune: error: {exc.one_line()}", err=True)
    sys.exit(exc.exit_code)


def _command(ctx: click.Context) -> str:
    args = ctx.meta.get("onnxprune.args") or ["?"]
    return args[0]


def _verbose(ctx: click.Context) -> bool:
    """Whether the subcommand's arguments (before any ``--``) hold -v/--verbose."""
    args = ctx.meta.get("onnxprune.args", [])[1:]
    args = args[:args.index("--")] if "--" in args else args
    return any(a in ("-v", "--verbose") for a in args)


def _one_line_warnings(show: Callable) -> Callable:
    """A ``warnings.showwarning`` printing onnxprune's own warnings as one line on stderr, others with ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, OnnxPruneWarning):
            click.echo(f"onnxprune: warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxprune")
def cli() -> None:
    """Make exported ONNX CNNs smaller and faster without retraining.

    Exit codes: 0 success, 1 general error, 2 bad model, 3 bad data, 4 bad option or output path,
    5 execution provider unavailable, 6 out of memory, 130 interrupted.
    """


def _register() -> None:
    from onnxprune.cli import analyze, bench, calibrate, compress, sweep

    cli.add_command(compress.compress)
    cli.add_command(calibrate.calibrate)
    cli.add_command(analyze.analyze)
    cli.add_command(bench.bench)
    cli.add_command(sweep.sweep)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="onnxprune")


if __name__ == "__main__":
    main()
