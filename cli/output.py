"""How the CLI prints: tables with uppercase headers, key/value blocks, "Doing X... OK" steps."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

_console: Console | None = None
"""rich is imported once something is drawn with it (tables, spinners): a step's line needs none of it, and its
import is some 40 ms of `convox deploy`."""


def console() -> Console:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
    return _console


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="")
    for header in headers:
        grid.add_column(header.upper(), no_wrap=True, overflow="ignore")
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    console().print(grid, markup=False)


def info(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(key) for key, _ in pairs)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {'' if value is None else value}")


def ago(timestamp: str | None, now: datetime | None = None) -> str:
    """``2015-01-01T00:00:00Z`` -> ``5 days ago`` (empty when there is no time)."""
    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return ""


def pretty_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


@contextmanager
def step(message: str) -> Iterator[None]:
    print(f"{message}... ", end="", flush=True, file=sys.stderr)
    try:
        yield
    except BaseException:
        print("", file=sys.stderr)
        raise
    print("OK", file=sys.stderr)


@contextmanager
def waiting(message: str) -> Iterator[None]:
    """:func:`step` with a spinner while it runs, where stderr is a terminal."""
    if not sys.stderr.isatty():
        with step(message):
            yield
        return
    from rich.console import Console

    with Console(stderr=True).status(f"{message}..."):
        try:
            yield
        except BaseException:
            print(f"{message}... ", file=sys.stderr)
            raise
    print(f"{message}... OK", file=sys.stderr)
