"""`convox logs`, `convox rack logs` and `convox rack ps`.

A log stream is a websocket (``v1.stream.rack``) to ``/apps/APP/logs``, ``/apps/APP/processes/PID/logs`` or
``/system/logs``; each message carries whole lines, printed as they come. Over the rack's own unix socket it
is a raw stream of the same route instead (``v1.raw.rack``, :mod:`shared.rawstream`), read with blocking reads
and no event loop: a line is printed sooner, and a burst costs less. When the rack side drops a stream
(the logs service restarting, a network blip), the CLI connects again and asks from a few seconds before the
last line it printed, skipping what it printed already: nothing is lost, nothing shown twice. Ctrl-C ends it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import IO, Annotated, Any
from urllib.parse import quote

import typer

from cli import completion, output
from cli.client import Client
from cli.config import Rack, current_rack, resolve_app
from cli.errors import CliError
from shared import rawstream
from shared.protocol import Process

RACK_APP = "convox"
SUBPROTOCOL = "v1.stream.rack"
STDOUT, STATUS = 1, 3
PING_INTERVAL = 20.0
PING_TIMEOUT = 60.0
RESUME_MARGIN = 5.0
"""Seconds before the last printed line a resumed stream starts from (lines of other processes may have come
a little out of order); what was printed already is skipped."""
RECONNECT_FOR = 120.0
"""How long the CLI keeps trying to get a dropped stream back before it gives up with an error."""
BACKOFF = (0.1, 0.25, 0.5, 1.0)
"""Pauses between tries to get a dropped stream back: a rack restarting one of its services answers again
within a second or two, and the follow resumes within a second of that (a refused try costs nothing)."""
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]
SinceOption = Annotated[
    str, typer.Option("--since", help="Start this long ago (30s, 2m, 1h30m, 2d) or at an RFC 3339 time.")
]
FilterOption = Annotated[str | None, typer.Option("--filter", help="Only lines containing this text.")]
NoFollowOption = Annotated[bool, typer.Option("--no-follow", help="Print the history and exit.")]


# ---- time ------------------------------------------------------------------------------------------------


def since_time(value: str, now: datetime | None = None) -> str:
    """``2m`` / ``1h30m`` / an RFC 3339 time -> an RFC 3339 time in UTC (fixed when the command starts, so
    that a reconnect does not move it)."""
    value = value.strip()
    match = DURATION.fullmatch(value)
    if value and match and any(match.groups()):
        days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
        moment = (now or datetime.now(UTC)) - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            expected = "a duration such as 2m or 1h30m, or an RFC 3339 time"
            raise CliError(f"--since: expected {expected}, got {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return stamp(moment)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def before(ts: bytes, seconds: float) -> bytes:
    """The timestamp ``seconds`` before the line timestamp ``ts`` (``...Z``), in the same form."""
    try:
        moment = datetime.fromisoformat(ts.decode("ascii").replace("Z", "+00:00"))
    except ValueError:
        return b""
    return stamp(moment - timedelta(seconds=seconds)).encode()


# ---- printing ------------------------------------------------------------------------------------------


class Printer:
    """Prints whole lines; remembers the last seconds of them so that a resumed stream skips what was shown.

    A stream's lines come in time order (the rack sends them so), so a message's last line is its newest:
    what is remembered is each message as it came, with that line's time, and a message is printed as it is.
    Only after a resume is each line looked at, until the lines are newer than what was printed before."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.last = b""
        self.window: deque[tuple[bytes, bytes]] = deque()
        """``(time of its last line, message)`` of the last ``2 * RESUME_MARGIN`` seconds."""
        self.skip: Counter[bytes] = Counter()
        self.skip_until = b""
        self.printed = 0
        self._second = b""
        self._cutoff = b""

    def feed(self, data: bytes) -> None:
        if self.skip:
            data = self._unseen(data)
        if not data:
            return
        self.out.write(data)
        self.out.flush()
        self.printed += data.count(b"\n")
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        ts = data[start : data.find(b" ", start)]
        if ts > self.last:
            self.last = ts
        window = self.window
        window.append((self.last, data))
        if self.last[:19] != self._second:  # the cutoff moves on once a second (a time parsed, not per message)
            self._second = self.last[:19]
            self._cutoff = before(self.last, RESUME_MARGIN * 2 + 1)
        while window and window[0][0] < self._cutoff:
            window.popleft()

    def _unseen(self, data: bytes) -> bytes:
        """The lines of ``data`` a resumed stream had not printed before."""
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        shown: list[bytes] = []
        for line in lines:
            ts = line[: line.find(b" ")]
            if ts > self.skip_until:  # past what was printed: the rest is new
                self.skip.clear()
            if self.skip and self.skip[line] > 0:
                self.skip[line] -= 1
                continue
            shown.append(line)
        return b"".join(line + b"\n" for line in shown)

    def resume(self) -> str | None:
        """Where a new connection starts (``None``: where the first one did), arming the skip of what was
        printed from there."""
        if not self.last:
            return None
        since = before(self.last, RESUME_MARGIN)
        self.skip = Counter(
            line
            for newest, data in self.window
            if newest >= since
            for line in data.split(b"\n")
            if line and line[: line.find(b" ")] >= since
        )
        self.skip_until = self.last
        return since.decode()


# ---- the stream ------------------------------------------------------------------------------------------


class Dropped(Exception):
    """The stream is gone without its status, or could not be had for now: worth another try."""


async def once(
    rack: Rack,
    path: str,
    query: Mapping[str, str],
    printer: Printer,
    connected: Callable[[], None],
    first_batch: Callable[[int], None] = lambda _: None,
) -> int:
    """One connection: print until the status (its exit code) or until it drops (:class:`Dropped`);
    ``first_batch`` is told how many lines the first message printed (the history it caught up)."""
    from websockets.exceptions import ConnectionClosed

    from cli.stream import StreamUnavailable, connect

    try:
        async with connect(rack, path, query) as connection:
            connected()
            first = True
            try:
                async for message in connection:
                    data = message.encode() if isinstance(message, str) else message
                    if not data:
                        continue
                    if data[0] == STDOUT:
                        before_count = printer.printed
                        printer.feed(data[1:])
                        if first:
                            first = False
                            first_batch(printer.printed - before_count)
                    elif data[0] == STATUS:
                        try:
                            status_message: dict[str, Any] = json.loads(data[1:])
                        except ValueError:
                            raise CliError("the rack sent a malformed status message") from None
                        if status_message.get("error"):
                            raise CliError(str(status_message["error"]))
                        return int(status_message.get("exit_code") or 0)
            except ConnectionClosed:
                pass
    except StreamUnavailable as exc:
        raise Dropped(exc.message) from None
    raise Dropped("the log stream ended without a status")


def once_raw(
    rack: Rack,
    path: str,
    query: Mapping[str, str],
    printer: Printer,
    connected: Callable[[], None],
    first_batch: Callable[[int], None] = lambda _: None,
) -> int:
    """:func:`once` over the rack's unix socket: a raw stream (:mod:`shared.rawstream`), read with plain
    blocking reads, each message printed as soon as it has come (no event loop, no websocket library)."""
    from cli import rawexec
    from cli.stream import StreamUnavailable, parse_status

    try:
        sock, first, _ = rawexec.open_stream(rack, path, list(query.items()))
    except StreamUnavailable as exc:
        raise Dropped(exc.message) from None
    with sock:
        connected()
        printed_first = False
        try:
            for kind, payload in rawstream.frames(sock, first):
                if kind == rawstream.STDOUT:
                    before_count = printer.printed
                    printer.feed(payload)
                    if not printed_first:
                        printed_first = True
                        first_batch(printer.printed - before_count)
                elif kind == rawstream.STATUS:
                    status = parse_status(payload)
                    if status is None:
                        raise CliError("the rack sent a malformed status message")
                    if status.error:
                        raise CliError(status.error)
                    return status.exit_code or 0
        except ConnectionError:
            pass
    raise Dropped("the log stream ended without a status")


def notice(message: str) -> None:
    """A line about the stream itself, on stderr (stdout carries only the log)."""
    print(message, file=sys.stderr, flush=True)


class Following:
    """What a followed log stream keeps across its connections: what was printed (to resume after it) and how
    long it has failed to come back. Says on stderr at once that it is reconnecting, and when it is back,
    that it resumed and how many lines it caught up."""

    def __init__(self, out: IO[bytes]) -> None:
        self.printer = Printer(out)
        self.ever = False
        self.reconnecting = False
        self.failing_since: float | None = None
        self.attempt = 0

    def params(self, query: Mapping[str, str]) -> dict[str, str]:
        """The next connection's query: from a little before the last line printed, once one was."""
        params = dict(query)
        resume = self.printer.resume()
        if resume is not None:
            params["since"] = resume
        return params

    def connected(self) -> None:
        self.ever, self.failing_since, self.attempt = True, None, 0

    def first_batch(self, lines: int) -> None:
        if self.reconnecting:
            self.reconnecting = False
            notice(f"resumed the log stream, caught up {lines} line{'' if lines == 1 else 's'}")

    def dropped(self, exc: Dropped) -> float:
        """The stream dropped: how long to pause before the next try (or :class:`CliError`: no more tries)."""
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        if not self.ever and "unreachable" in str(exc):
            raise CliError(str(exc)) from None
        if self.ever and not self.reconnecting:
            self.reconnecting = True
            notice(f"lost the log stream ({exc}), reconnecting...")
        if now - self.failing_since > RECONNECT_FOR:
            raise CliError(f"lost the log stream: {exc}") from None
        self.attempt += 1
        return BACKOFF[min(self.attempt - 1, len(BACKOFF) - 1)]


async def follow_stream(rack: Rack, path: str, query: dict[str, str], out: IO[bytes]) -> int:
    """Run a log stream (a websocket) to its end, connecting again while the rack side drops it."""
    import asyncio

    following = Following(out)
    while True:
        try:
            return await once(rack, path, following.params(query), following.printer, following.connected,
                              following.first_batch)  # fmt: skip
        except Dropped as exc:
            pause = following.dropped(exc)
        await asyncio.sleep(pause)


def follow_raw(rack: Rack, path: str, query: dict[str, str], out: IO[bytes]) -> int:
    """:func:`follow_stream` over the rack's unix socket, as raw streams (:func:`once_raw`)."""
    following = Following(out)
    while True:
        try:
            return once_raw(rack, path, following.params(query), following.printer, following.connected,
                            following.first_batch)  # fmt: skip
        except Dropped as exc:
            pause = following.dropped(exc)
        time.sleep(pause)


def stream_logs(path: str, query: dict[str, str]) -> None:
    """Print a log stream; exits with its status (0), 130 on Ctrl-C, 141 when stdout is closed."""
    rack = current_rack()
    try:
        if rack.uds is not None:
            code = follow_raw(rack, path, query, sys.stdout.buffer)
        else:
            import asyncio

            code = asyncio.run(follow_stream(rack, path, query, sys.stdout.buffer))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(141) from None
    if code:
        raise typer.Exit(code)


def log_query(since: str, follow: bool, service: str | None, text: str | None) -> dict[str, str]:
    query = {"since": since_time(since), "follow": "true" if follow else "false"}
    if service:
        query["service"] = service
    if text:
        query["filter"] = text
    return query


# ---- the rack's processes --------------------------------------------------------------------------------


RACK_PS_HEADERS = ["id", "name", "cpu", "mem", "started", "command"]
WATCH_EVERY = 2.0


def rack_rows(found: list[Process]) -> list[tuple[str, ...]]:
    return [
        (
            p["id"],
            p["name"],
            f"{p['cpu'] * 100:.2f}%",
            f"{p['memory'] * 100:.2f}%",
            output.ago(p["started"]),
            p["command"],
        )
        for p in found
    ]


def rack_processes() -> None:
    """`convox rack ps` (and `convox ps --app convox`): the rack's own processes, like an app's."""
    with Client(current_rack()) as c:
        found = c.get_list("/system/processes", Process)
    output.table(RACK_PS_HEADERS, rack_rows(found))


def watch_rack_processes(every: float = WATCH_EVERY) -> None:
    """`convox rack ps --watch`: the table redrawn with fresh CPU and MEM every ``every`` seconds, until Ctrl-C."""
    from rich.live import Live
    from rich.table import Table

    def grid(rows: list[tuple[str, ...]]) -> Table:
        table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="")
        for header in RACK_PS_HEADERS:
            table.add_column(header.upper(), no_wrap=True, overflow="ignore")
        for row in rows:
            table.add_row(*row)
        return table

    try:
        with Client(current_rack()) as c, Live(grid([]), console=output.console(), auto_refresh=False) as live:
            while True:
                live.update(grid(rack_rows(c.get_list("/system/processes", Process))), refresh=True)
                time.sleep(every)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# ---- commands --------------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    from cli.app import rack_app

    @app.command("logs")
    def logs(
        app_opt: AppOption = None,
        service: Annotated[
            str | None,
            typer.Option("--service", "-s", help="Only this process type.", autocompletion=completion.process_types),
        ] = None,
        since: SinceOption = "2m",
        text: FilterOption = None,
        no_follow: NoFollowOption = False,
        pid: Annotated[str | None, typer.Option("--pid", help="Only this process (also once it is gone).")] = None,
    ) -> None:
        """Every process of the app merged, with platform events; followed until Ctrl-C."""
        name = resolve_app(app_opt)
        query = log_query(since, not no_follow, service, text)
        if name == RACK_APP:
            if pid:
                raise CliError("--pid: the rack's own log is per service (use --service)")
            path = "/system/logs"
        elif pid:
            if not pid.isalnum():
                raise CliError(f"no such process: {pid}")
            path = f"/apps/{quote(name, safe='')}/processes/{pid}/logs"
        else:
            path = f"/apps/{quote(name, safe='')}/logs"
        stream_logs(path, query)

    @rack_app.command("logs")
    def rack_logs(
        service: Annotated[str | None, typer.Option("--service", "-s", help="Only this service (gateway).")] = None,
        since: SinceOption = "2m",
        text: FilterOption = None,
        no_follow: NoFollowOption = False,
    ) -> None:
        """The rack's own log: every service's lines, followed until Ctrl-C."""
        stream_logs("/system/logs", log_query(since, not no_follow, service, text))

    @rack_app.command("ps")
    def rack_ps(
        watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw with fresh figures until Ctrl-C.")] = False,
    ) -> None:
        """The rack's own processes (the supervisor and its services) with CPU and MEM."""
        if watch:
            watch_rack_processes()
        else:
            rack_processes()
