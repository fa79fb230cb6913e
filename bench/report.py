"""The report: a rich table on the terminal and a JSON document for tools and history."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.result import Row, format_value

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def table(rows: Sequence[Row], caption: str = "") -> Table:
    out = Table(title="convox vs docker, side by side", caption=caption or None)
    out.add_column("case")
    out.add_column("convox (median)", justify="right")
    out.add_column("docker (median)", justify="right")
    out.add_column("ratio", justify="right")
    out.add_column("target", justify="right")
    out.add_column("pass/fail", justify="center")
    for row in rows:
        r = row.result
        if r is None:
            out.add_row(row.case, "—", "—", "—", "—", "[bold red]error[/]")
            continue
        out.add_row(
            row.case,
            format_value(r.convox.median, r.unit),
            format_value(r.docker.median, r.unit),
            f"{r.ratio:.2f}x",
            r.target.describe(r.unit),
            "[bold green]pass[/]" if r.passed else "[bold red]FAIL[/]",
        )
    return out


def legend(row: Row) -> str:
    """What a row compared, its sample count and p90s (the table shows medians only)."""
    r = row.result
    if r is None:
        return f"[red]{row.case}: {row.error}[/]"
    return (
        f"[bold]{row.case}[/]: {r.title} [dim](n={len(r.convox.samples)} each; "
        f"p90 {format_value(r.convox.p90, r.unit)} / {format_value(r.docker.p90, r.unit)})[/]"
    )


def print_report(rows: Sequence[Row], console: Console, caption: str = "") -> None:
    console.print(table(rows, caption))
    for row in rows:
        console.print(legend(row), highlight=False)


def document(rows: Sequence[Row], settings: dict[str, object]) -> dict[str, object]:
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "settings": settings,
        "passed": all(row.ok for row in rows),
        "results": [row.to_dict() for row in rows],
    }


def write_json(rows: Sequence[Row], settings: dict[str, object], path: Path) -> Path:
    """The JSON document at ``path`` and its chart beside it (``latest.json`` -> ``latest.html``)."""
    from bench.chart import write_html

    doc = document(rows, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    write_html(json.loads(json.dumps(doc, default=str)), path.with_suffix(".html"))
    return path
