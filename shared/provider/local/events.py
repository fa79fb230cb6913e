"""Platform events in an app's log (Heroku shows them the same way): release promoted, health check failed,
scaled. Whatever process writes one (the apps service scales, the workers roll releases out) puts a row in the
``events`` table; the logs service's collector (a loop of the workers) tails the table into the app's stream
and history.

Process started / stopped / crashed come from the Docker Engine's events, read by the collector itself, and
build output from the builds' log files; both are shaped here too, so that every event reads alike::

    2015-01-01T00:00:00.000000Z convox:RNJYVQUMKKU release promoted
    2015-01-01T00:00:00.000000Z convox:RNJYVQUMKKU/68831d3dce63 web crashed (exit code 1)

Timestamps are kept as Docker writes them, RFC 3339 in UTC with nine fractional digits and a ``Z``: fixed
width, so that comparing two as strings compares the times.
"""

from __future__ import annotations

from shared.logfmt import Logger
from shared.logline import EVENT_SERVICE
from shared.logstore.timestamps import now_ts, ts_to_ns
from shared.provider.local.bell import Bell
from shared.provider.local.state import State

log = Logger("logs")


def docker_since(ts: str) -> str:
    """A timestamp as the Engine's ``since`` parameter (``seconds.nanoseconds``; inclusive)."""
    ns = ts_to_ns(ts)
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


# ---- the events table ------------------------------------------------------------------------------------


def clean(text: str) -> str:
    """One line of text: no newlines, no tabs (the history's field separator)."""
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")


class Events:
    """Writes platform events of apps; never raises (an event that cannot be written is logged and dropped,
    it must not fail the roll-out that emits it)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.bell: Bell | None = None
        """Rung once an event is written: the log collector reads it at once instead of at its next poll."""

    async def emit(
        self, app: str, message: str, *, release: str = "", pid: str = "", service: str = EVENT_SERVICE
    ) -> None:
        try:
            await self.state.execute(
                "INSERT INTO events (app, time, service, release, pid, message) VALUES (?, ?, ?, ?, ?, ?)",
                (app, now_ts(), clean(service), clean(release), clean(pid[:12]), clean(message)),
            )
        except Exception as exc:
            log.error("event.emit", app=app, error=type(exc).__name__)
            return
        if self.bell is not None:
            self.bell.ring()


# ---- how events read -------------------------------------------------------------------------------------


def exit_message(service: str, code: int, *, killed: bool, oom: bool) -> str:
    """A process that ended: stopped by the rack, crashed (non-zero, or out of memory), or exited."""
    if oom:
        return f"{service} crashed: out of memory (exit code {code})"
    if killed:
        return f"{service} stopped (exit code {code})"
    if code:
        return f"{service} crashed (exit code {code})"
    return f"{service} exited (exit code 0)"
