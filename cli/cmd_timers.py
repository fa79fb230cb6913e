"""`convox timers`: the app's timers, their schedules, the last run with its exit code, and the next run."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from cli import output
from cli.cmd_releases import AppOption, client
from cli.config import resolve_app
from shared.protocol import TimerStatus


def until(timestamp: str | None, now: datetime | None = None) -> str:
    """``2030-01-01T00:05:00Z`` -> ``in 4 minutes`` (empty when there is no time)."""
    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((then - (now or datetime.now(UTC))).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            n = seconds // size
            return f"in {n} {unit}{'' if n == 1 else 's'}"
    return ""


def register(app: typer.Typer) -> None:
    @app.command("timers")
    def timers_list(app_opt: AppOption = None) -> None:
        """List the app's timers: schedule (UTC), service, command, last run, its exit code, next run."""
        name = resolve_app(app_opt)
        with client() as c:
            rows = c.get_list(f"/apps/{name}/timers", TimerStatus)
        output.table(
            ["name", "schedule", "service", "command", "last run", "exit", "next run"],
            [
                (
                    t["name"],
                    t["schedule"],
                    t["service"],
                    t["command"],
                    output.ago(t["last_run"]),
                    "running" if t["running"] else ("" if t["last_exit"] is None else str(t["last_exit"])),
                    until(t["next_run"]),
                )
                for t in rows
            ],
        )
