"""Structured logs in logfmt: ``ns=apps at=app.create app=myapp state=success elapsed=12.3``.

One line per event. Values are quoted when they need to be; secrets never reach here (callers pass only
names, ids and figures).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@+")


_ESCAPES = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, 0x85)},
    **{0x2028: "\\u2028", 0x2029: "\\u2029"},
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
"""What a quoted value writes for a backslash, a quote and every character that could end or split a line
(a C0 or C1 control, the Unicode line and paragraph separators): a value from outside (a request path) can
never make two log lines of one, nor forge a field."""


class Quoted(str):
    """A value always written in quotes (``method="GET"``), as the request log lines show them."""


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if text and not isinstance(value, Quoted) and all(ch in _SAFE for ch in text):
        return text
    return f'"{text.translate(_ESCAPES)}"'


def format_line(**fields: Any) -> str:
    """Render ``fields`` as one logfmt line (``None`` values are left out)."""
    return " ".join(f"{key}={_value(val)}" for key, val in fields.items() if val is not None)


class Logger:
    """A logfmt logger bound to a namespace: ``Logger("apps").log("app.create", app="x")``."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._logger = logging.getLogger(f"rack.{ns}")

    def log(self, at: str, **fields: Any) -> None:
        self._logger.info(format_line(ns=self.ns, at=at, **fields))

    def error(self, at: str, **fields: Any) -> None:
        self._logger.error(format_line(ns=self.ns, at=at, state="error", **fields))

    @contextmanager
    def measure(self, at: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Log one line when the block ends: ``state=success`` or ``state=error``, with ``elapsed`` (ms)."""
        extra: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield extra
        except Exception as exc:
            elapsed = (time.perf_counter() - start) * 1000
            message = getattr(exc, "message", None) or type(exc).__name__
            self.log(at, **fields, **extra, state="error", message=message, elapsed=elapsed)
            raise
        elapsed = (time.perf_counter() - start) * 1000
        self.log(at, **fields, **extra, state="success", elapsed=elapsed)


def configure(level: int = logging.INFO) -> None:
    """Send every ``rack.*`` line to stderr as it is, one event per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("rack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
