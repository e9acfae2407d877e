"""Self-contained HTML: escaped text, tables and PNG figures embedded as base64 data URIs (no external files)."""
from __future__ import annotations

import base64
import html
from typing import Sequence

from onnxprune import __version__

__all__ = ["document", "heading", "paragraph", "preformatted", "image"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
pre { background: #f5f7fa; padding: 1em; overflow-x: auto; font-size: 13px; line-height: 1.35; }
img { max-width: 100%; height: auto; }
footer, .note { color: #666; font-size: 13px; }
"""


def document(title: str, parts: Sequence[str]) -> str:
    """A complete HTML page with ``parts`` (already HTML) as its body."""
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n"
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
            f"<footer>written by onnxprune {__version__}</footer>\n</body>\n</html>\n")


def heading(text: str) -> str:
    return f"<h2>{html.escape(text)}</h2>"


def paragraph(text: str, note: bool = False) -> str:
    tag = '<p class="note">' if note else "<p>"
    return f"{tag}{html.escape(text)}</p>"


def preformatted(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def image(png: bytes, alt: str) -> str:
    """An ``<img>`` carrying the PNG itself."""
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{data}\">"
