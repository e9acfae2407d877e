"""User-facing errors: the CLI prints them as one line and exits non-zero; anything else is a bug."""
from __future__ import annotations


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


class OnnxPruneWarning(UserWarning):
    """A problem worked around (e.g. an unreadable cache entry); the CLI prints it as one line."""
