"""The command line: ``python -m bench [NAME ...] [--repeat N] [--warmup N] [--list] [--json PATH]``.

Exits 0 when every case met its target, 1 when one failed or errored, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bench import cases, report
from bench.context import Context, find_convox
from bench.result import Row


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="cases to run (default: all)")
    parser.add_argument(
        "--repeat", "-n", type=int, metavar="N", help="recorded runs per side (default: each case's own)"
    )
    parser.add_argument(
        "--warmup", type=int, metavar="N", help="unrecorded runs per side before those (default: each case's own)"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--json",
        type=Path,
        default=report.RESULTS_DIR / "latest.json",
        metavar="PATH",
        help="where to write the results (default: bench/results/latest.json; the chart goes beside it as .html)",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in cases.CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)} (known: {', '.join(cases.CASES)})")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def run_case(name: str, ctx: Context, console: Console) -> Row:
    with console.status(f"[bold]{name}[/] …"):
        started = time.monotonic()
        try:
            result = cases.load(name)(ctx)
        except Exception as exc:  # one broken case must not hide the others' rows
            return Row(name, error=f"{type(exc).__name__}: {exc}")
    console.print(f"[dim]{name}: done in {time.monotonic() - started:.1f}s[/]", highlight=False)
    return Row(name, result)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    console = Console()
    if args.list:
        for name in cases.CASES:
            console.print(f"[bold]{name}[/]  {cases.describe(name)}", highlight=False)
        return 0
    ctx = Context(convox=find_convox(), repeat=args.repeat, warmup=args.warmup)
    rows: list[Row] = []
    try:
        for name in args.names or list(cases.CASES):
            rows.append(run_case(name, ctx, console))
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    finally:
        ctx.close()
    settings: dict[str, object] = {
        "repeat": args.repeat,
        "warmup": args.warmup,
        "convox": str(ctx.convox),
        "cases": [row.case for row in rows],
    }
    caption = "interleaved runs; ratio = convox/docker of the medians"
    report.print_report(rows, console, caption)
    path = report.write_json(rows, settings, args.json)
    console.print(f"results: {path} (chart: {path.with_suffix('.html')})", highlight=False)
    return 0 if all(row.ok for row in rows) else 1
