"""`convox` commands: processes — ps (with --watch), ps info, ps stop, exec, run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli import completion, output
from cli.client import Client
from cli.config import current_rack, resolve_app
from cli.errors import CliError
from shared.protocol import Process

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]
RACK_APP = "convox"
COMMAND_CONTEXT = {"allow_interspersed_args": False, "ignore_unknown_options": True}
"""Everything after the pid (exec) or the process type (run) is the command, dashes included."""
HEADERS = ["id", "name", "release", "cpu", "mem", "started", "command"]


def ago(started: str | None, now: datetime | None = None) -> str:
    """``2015-01-01T00:00:00Z`` -> ``5 days ago`` (as Convox shows STARTED)."""
    if not started:
        return ""
    try:
        when = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return started
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
                       ("hour", 3600), ("minute", 60), ("second", 1)):  # fmt: skip
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def percent(fraction: float | None) -> str:
    return f"{float(fraction or 0) * 100:.2f}%"


def rows(processes: Sequence[Process]) -> list[tuple[str, ...]]:
    return [
        (
            p["id"][:12],
            p["name"],
            p["release"],
            percent(p["cpu"]),
            percent(p["memory"]),
            ago(p["started"]),
            p["command"],
        )
        for p in processes
    ]


def processes_path(app: str) -> str:
    return "/system/processes" if app == RACK_APP else f"/apps/{quote(app)}/processes"


def check_pid(pid: str) -> str:
    from cli.stream import check_pid as check

    return check(pid)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    ps = typer.Typer(help="List, inspect and stop the app's processes.", invoke_without_command=True)
    app.add_typer(ps, name="ps")

    @ps.callback()
    def ps_list(
        ctx: typer.Context,
        app_opt: AppOption = None,
        service: Annotated[
            str | None,
            typer.Option("--service", "-s", help="Only this process type.", autocompletion=completion.process_types),
        ] = None,
        release: Annotated[str | None, typer.Option("--release", help="Only processes of this release.")] = None,
        watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw CPU and MEM every second.")] = False,
    ) -> None:
        """List the app's processes: ID NAME RELEASE CPU MEM STARTED COMMAND."""
        if ctx.invoked_subcommand is not None:
            return
        name = resolve_app(app_opt)
        params = {k: v for k, v in (("service", service), ("release", release)) if v}
        if watch:
            watch_table(name, params)
            return
        with Client(current_rack()) as c:
            found = c.get_list(processes_path(name), Process, params=params)
        output.table(HEADERS, rows(found))

    @ps.command("info")
    def ps_info(pid: Annotated[str, typer.Argument(help="The process id.")], app_opt: AppOption = None) -> None:
        """Show a process."""
        name = resolve_app(app_opt)
        with Client(current_rack()) as c:
            p = c.get(f"{processes_path(name)}/{check_pid(pid)}", Process)
        output.info(
            [
                ("Id", p["id"]),
                ("App", p["app"]),
                ("Name", p["name"]),
                ("Release", p["release"]),
                ("Status", p["status"]),
                ("Command", p["command"]),
                ("Image", p["image"]),
                ("Host", p["host"]),
                ("Ports", " ".join(p["ports"])),
                ("CPU", percent(p["cpu"])),
                ("Memory", percent(p["memory"])),
                ("Started", ago(p["started"])),
            ]
        )

    @ps.command("stop")
    def ps_stop(pid: Annotated[str, typer.Argument(help="The process id.")], app_opt: AppOption = None) -> None:
        """Stop a process (SIGTERM, then SIGKILL after 10 seconds)."""
        name = resolve_app(app_opt)
        with Client(current_rack(), timeout=60) as c, output.step(f"Stopping {pid}"):
            c.send("DELETE", f"{processes_path(name)}/{check_pid(pid)}")

    @app.command("exec", context_settings=COMMAND_CONTEXT)
    def exec_(
        pid: Annotated[str, typer.Argument(help="The process to run the command in.")],
        command: Annotated[list[str], typer.Argument(help="The command: everything after the pid.")],
        app_opt: AppOption = None,
    ) -> None:
        """Run a command in a running process, interactive when stdin is a terminal; exits with its code."""
        from cli import stream

        raise typer.Exit(stream.exec_command(resolve_app(app_opt), pid, command))

    @app.command("run", context_settings=COMMAND_CONTEXT)
    def run(
        service: Annotated[
            str,
            typer.Argument(
                help="The process type (as named in the manifest).", autocompletion=completion.process_types
            ),
        ],
        command: Annotated[list[str], typer.Argument(help="The command: everything after the process type.")],
        app_opt: AppOption = None,
        release: Annotated[str | None, typer.Option("--release", help="Run this release (default: active).")] = None,
        detach: Annotated[bool, typer.Option("--detach", "-d", help="Start it and print its pid.")] = False,
        env: Annotated[
            list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE on top of the app's environment.")
        ] = None,
        timeout: Annotated[int | None, typer.Option("--timeout", "-t", min=1, help="Stop it after S seconds.")] = None,
    ) -> None:
        """Run a one-off process of the app's release, interactive when stdin is a terminal (a command given
        as one string runs under `sh -c`); exits with its code."""
        from cli import stream

        name = resolve_app(app_opt)
        environment = stream.environment(env or [])
        if detach:
            body: dict[str, Any] = {"command": command, "environment": environment, "release": release or ""}
            if timeout:
                body["timeout"] = timeout
            with Client(current_rack(), timeout=120) as c:
                process = c.post(stream.run_path(name, service), Process, json=body)
            print(process["id"])
            return
        raise typer.Exit(stream.run_command(name, service, command, environment, release, timeout))


def grid(cells: Sequence[Sequence[str]]) -> Any:
    """The ps table as a rich renderable (the same look as :func:`cli.output.table`)."""
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="")
    for header in HEADERS:
        table.add_column(header.upper(), no_wrap=True, overflow="ignore")
    for row in cells:
        table.add_row(*row)
    return table


WATCH_RECONNECT_FOR = 120.0
"""How long `ps --watch` keeps trying to get a dropped stream back before it gives up with an error."""
WATCH_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)


def watch_table(app: str, params: dict[str, str]) -> None:
    """`convox ps --watch`: the table redrawn from the metrics stream, until Ctrl-C (exit 130). When the rack
    goes away it says so at once on stderr and reconnects; when back, it says it resumed."""
    import asyncio
    import sys
    import time

    from rich.live import Live

    from cli import stream

    if app == RACK_APP:
        raise CliError("--watch is not available for the rack's own processes")

    def notice(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    async def show() -> None:
        rack = current_rack()
        path = f"/apps/{quote(app)}/processes/metrics"
        ever = reconnecting = False
        failing_since: float | None = None
        attempt = 0
        with Live(grid([]), console=output.console(), auto_refresh=False) as live:
            while True:
                try:
                    async for frame in stream.watch(rack, path, list(params.items())):
                        if reconnecting:
                            reconnecting = False
                            notice("resumed watching the processes")
                        ever, failing_since, attempt = True, None, 0
                        live.update(grid(rows(frame)), refresh=True)
                except stream.StreamUnavailable as exc:
                    reason = exc.message
                except CliError as exc:
                    if exc.message != stream.METRICS_ENDED:
                        raise
                    reason = exc.message
                if not ever:
                    raise CliError(reason)
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > WATCH_RECONNECT_FOR:
                    raise CliError(f"lost the metrics stream: {reason}")
                if not reconnecting:
                    reconnecting = True
                    notice(f"lost the metrics stream ({reason}), reconnecting...")
                await asyncio.sleep(WATCH_BACKOFF[min(attempt, len(WATCH_BACKOFF) - 1)])
                attempt += 1

    try:
        asyncio.run(show())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
