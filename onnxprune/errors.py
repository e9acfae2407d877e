"""User-facing errors: the CLI prints them as one line and exits non-zero; anything else is a bug."""
from __future__ import annotations

import contextlib
from typing import Iterator


class OnnxPruneError(Exception):
    """A problem with the user's input or environment, explained in one line.

    ``note`` adds the fix, Polygraphy-style ("Note: ..."). ``exit_code`` is what the CLI returns.
    """

    exit_code = 1

    def __init__(self, message: str, note: str | None = None):
        super().__init__(message)
        self.message = message
        self.note = note

    def one_line(self) -> str:
        text = self.message.replace("\n", " ").strip()
        if self.note:
            text += f" Note: {self.note.replace(chr(10), ' ').strip()}"
        return text


class ModelError(OnnxPruneError):
    """The model file is missing, unreadable, invalid or unsupported."""

    exit_code = 2


class DataError(OnnxPruneError):
    """Calibration data is missing, empty, of the wrong shape, dtype or content."""

    exit_code = 3


class UsageError(OnnxPruneError):
    """An option value is out of range or an output path is not acceptable."""

    exit_code = 4


class ProviderError(OnnxPruneError):
    """A requested ONNX Runtime execution provider is not available."""

    exit_code = 5


class ClusterError(OnnxPruneError):
    """A Ray cluster (``--ray``) cannot be reached, lacks the resources asked for, or lost a task for good."""

    exit_code = 5


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name when it has none."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


class InternalError(OnnxPruneError):
    """An unexpected exception inside a stage (a bug, or input no check foresaw): one line naming the stage;
    the original exception is its ``__cause__`` (the CLI prints its traceback with -v)."""

    exit_code = 1

    def __init__(self, doing: str, exc: BaseException):
        detail = first_line(exc) if str(exc).strip() else ""
        super().__init__(f"internal error while {doing}: {type(exc).__name__}{': ' + detail if detail else ''}",
                         note="rerun with -v for the traceback, and please report it with the model's opsets and exporter")


@contextlib.contextmanager
def during(doing: str) -> Iterator[None]:
    """Re-raise anything unexpected inside as an InternalError saying what was being done (``"calibrating"``).

    onnxprune's own errors, Ctrl-C and MemoryError pass through; an InternalError of an inner stage is kept."""
    try:
        yield
    except (OnnxPruneError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the point: whatever escapes becomes one line
        raise InternalError(doing, exc) from exc


class OnnxPruneWarning(UserWarning):
    """A problem worked around (e.g. an unreadable cache entry); the CLI prints it as one line."""
