"""`convox` commands: build, builds, builds info, builds logs (a build itself: :mod:`cli.building`)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli import completion, output
from cli.building import build_and_wait, follow_logs
from cli.client import Client
from cli.config import current_rack, resolve_app
from shared.protocol import Build

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]


def client() -> Client:
    return Client(current_rack(), timeout=60)


# ---- rendering ---------------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def elapsed(build: Build, now: datetime | None = None) -> str:
    """``0.8s``, ``12s``, ``3m4s``, ``1h2m``: from start to end (or to now while it runs); a build of a few
    seconds (the usual, with a warm cache) to a tenth, not rounded down to ``0s``."""
    started = _parse_time(build["started"])
    if started is None:
        return ""
    ended = _parse_time(build["ended"]) or now or datetime.now(UTC)
    exact = max(0.0, (ended - started).total_seconds())
    if exact < 10:
        return f"{exact:.1f}s"
    seconds = int(exact)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m"


# ---- commands ----------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    builds = typer.Typer(help="List builds, show one, show its log.", invoke_without_command=True)
    app.add_typer(builds, name="builds")

    @app.command("build")
    def build(
        directory: Annotated[Path, typer.Argument(help="The app's source.")] = Path("."),
        app_opt: AppOption = None,
        description: Annotated[str, typer.Option("--description", "-d", help="What this build is.")] = "",
        manifest: Annotated[str, typer.Option("--manifest", "-m", help="Manifest path in the source.")] = "",
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Build without Docker's cache.")] = False,
    ) -> None:
        """Build the directory into a release (not promoted), following the build's output."""
        name = resolve_app(app_opt, directory.resolve())
        with client() as c:
            build_and_wait(c, name, directory, description=description, manifest=manifest, no_cache=no_cache)

    @builds.callback()
    def builds_list(
        ctx: typer.Context,
        app_opt: AppOption = None,
        limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 20,
    ) -> None:
        """List the app's builds, newest first."""
        if ctx.invoked_subcommand is not None:
            return
        name = resolve_app(app_opt)
        with client() as c:
            rows = c.get_list(f"/apps/{name}/builds", Build, params={"limit": limit})
        output.table(
            ["id", "status", "release", "started", "elapsed", "description"],
            [
                (b["id"], b["status"], b["release"], output.ago(b["started"]), elapsed(b), b["description"])
                for b in rows
            ],
        )

    @builds.command("info")
    def builds_info(build_id: Annotated[str, typer.Argument(help="The build.")], app_opt: AppOption = None) -> None:
        """Show a build."""
        name = resolve_app(app_opt)
        with client() as c:
            b = c.get(f"/apps/{name}/builds/{build_id}", Build)
        pairs: list[tuple[str, str]] = [
            ("Id", b["id"]),
            ("Status", b["status"]),
            ("Release", b["release"]),
            ("Description", b["description"]),
            ("Started", b["started"] or ""),
            ("Elapsed", elapsed(b)),
        ]
        if b["error"]:
            pairs.append(("Error", b["error"]))
        output.info(pairs)

    @builds.command("logs")
    def builds_logs(build_id: Annotated[str, typer.Argument(help="The build.")], app_opt: AppOption = None) -> None:
        """Show a build's log; a running build's is followed until it ends."""
        name = resolve_app(app_opt)
        follow_logs(current_rack(), name, build_id, sys.stdout.buffer)
