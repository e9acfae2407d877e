"""Output files: atomic writes (a temporary file in the destination folder, moved into place only on success),
destination checks before any work, and removal of outputs when a later step fails."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from onnxprune.errors import UsageError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it replaces ``final`` only if the block succeeds."""
    final = Path(final)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=str(final.parent))
    except OSError as exc:
        raise _cannot_write(final, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):   # a full disk, a folder removed meanwhile: the user's to fix, not a bug
            raise _cannot_write(final, exc) from exc
        raise


def _cannot_write(path: Path, exc: OSError) -> UsageError:
    return UsageError(f"cannot write '{path}': {exc.strerror or exc}.")


@contextlib.contextmanager
def removed_on_error(*paths: str | os.PathLike) -> Iterator[None]:
    """Delete ``paths`` (those that exist) when the block raises: a failed later step leaves no output behind."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()
        raise


def check_destination(path: str | os.PathLike, option: str, example: str) -> Path:
    """Reject an output file whose folder is missing or not writable, before any work; UsageError names ``option``."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{option} '{out}' is a folder.", note=f"give a file name, e.g. {option} {example}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"the folder of {option} '{out}' does not exist.", note=f"create '{folder}' first")
    try:  # tried, not read from the permission bits: root passes those on a read-only mount, and /proc
        fd, probe = tempfile.mkstemp(prefix=".onnxprune-", suffix=".probe", dir=str(folder))
    except OSError as exc:
        raise UsageError(f"cannot write to the folder of {option} '{out}': {exc.strerror or exc}.") from exc
    os.close(fd)
    os.unlink(probe)
    return out


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
