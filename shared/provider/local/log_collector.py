"""The core of the local provider's log collector: every app's log (:class:`AppLog`, a history on disk in
time order, fanned out to followers), the sources' cursors (``log_sources``), and the work that keeps them:
releasing lines in order, writing them to the history, saving the cursors, ageing out what is old.

The sources that feed it are its subclasses' (:mod:`shared.provider.local.log_containers`: the Docker
Engine's logs and events; :mod:`shared.provider.local.log_platform`: platform events and builds' output);
:class:`shared.provider.local.logs.LocalLogs` is the provider's ``LogsAPI`` over all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import BadRequest, RackError
from shared.logfmt import Logger
from shared.logstore.applog import AppLog
from shared.logstore.history import History, Limits
from shared.logstore.lines import Line, Offset, advance_all, after, sources, text_bytes
from shared.logstore.settings import LogStoreSettings
from shared.logstore.timestamps import ts_from_datetime
from shared.models import invalid_app_name
from shared.names import is_app_name, under
from shared.provider.local.apps import LocalApps
from shared.provider.local.bell import Bell
from shared.provider.local.docker import LABEL_APP, LABEL_RACK, Docker
from shared.provider.local.events import Events
from shared.provider.local.receipts import Receipts
from shared.provider.local.state import State

if TYPE_CHECKING:
    from shared.provider.local.log_containers import ContainerEnd

log = Logger("logs")

LABEL_BUILD = "convox.build"
MAINTAIN_EVERY = 30.0
INLINE_WRITE = 64 << 10
"""A flush of at most this many bytes of text is appended to the history on the loop (a buffered write of a
few lines); a bigger one goes to a thread."""
CURSOR_GAP = 1.0
"""Seconds between two saves of the sources' cursors at least, so that a burst of lines is not a burst of
database writes (the history itself is written, and its lines sent to the followers, as soon as they are
released: a line reaches a follower a write later, not a batch later). Cursors that lag the history are safe:
a restart takes the newest segment's lines' cursors too, and a new segment saves them at once."""


class LogCollector:
    """The log store's side of the collector (see the module); its sources are its subclasses'."""

    def __init__(
        self, state: State, docker: Docker, apps: LocalApps, rack: str, data_dir: Path, limits: Limits | None = None
    ) -> None:
        self.state = state
        self.docker = docker
        self.apps = apps
        self.rack = rack
        self.events = Events(state)
        self.lifecycle_added = asyncio.Event()
        """Set when a process's start or exit is added: it waits for the events table to be read past it."""
        self.bell: Bell | None = None
        """Rung when an event is written (:class:`Events`): the events' tail waits for it between reads."""
        self.receipts = Receipts(state)
        self.root = data_dir / "logs"
        self.apps_dir = self.root / "apps"
        self.rack_log = self.root / "rack.log"
        self.builds_dir = data_dir / "builds"
        self.limits = limits or LogStoreSettings().limits()
        self.running = False
        self.logs: dict[str, AppLog] = {}
        self.offsets: dict[str, Offset] = {}
        """Every source's cursor as far as lines were collected (what a re-attach starts from)."""
        self.saved: dict[str, Offset] = {}
        """Every source's cursor as far as lines are in the history (what is persisted)."""
        self.source_app: dict[str, str] = {}
        self.unsaved: set[str] = set()
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.reread: set[str] = set()
        """Containers attached again while their reader runs: it reads on (or again) rather than ending."""
        self.ends: dict[str, ContainerEnd] = {}
        """How each container's last run ended, as far as its events have said."""
        self.to_flush: set[AppLog] = set()
        self.known_apps: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._released = asyncio.Event()
        """Set when lines are released: the flusher writes them (and so sends them to the followers) soon."""
        self._writing = False
        """Whether the flusher is writing to the history in a thread (nothing else writes meanwhile)."""
        self._rotated = False
        """Whether a write outside the flusher began a new segment of a history (cursors are saved at once)."""
        self._opening: dict[str, asyncio.Lock] = {}
        self._docker_down = False
        self.events_read_to = ""
        """Every platform event written before this time has been read from the events table."""

    # ---- apps ------------------------------------------------------------------------------------------

    async def applog(self, name: str) -> AppLog:
        applog = self.logs.get(name)
        if applog is not None:
            return applog
        async with self._opening.setdefault(name, asyncio.Lock()):
            applog = self.logs.get(name)
            if applog is None:
                if not is_app_name(name):  # a name from a label, a row or a file name: never a path unchecked
                    raise BadRequest(invalid_app_name(name))
                history = History(under(self.apps_dir, name), self.limits)
                seq, recovered = await asyncio.to_thread(history.open)
                for src, offset in recovered.items():
                    saved = self.saved.get(src)
                    if (
                        saved is None
                        or after(src, offset.cursor, saved.cursor)
                        or (offset.cursor == saved.cursor and offset.count > saved.count)
                    ):
                        self.saved[src] = offset
                        self.offsets[src] = replace(offset)
                        self.source_app[src] = name
                        self.unsaved.add(src)
                applog = self.logs[name] = AppLog(name, history, self.limits, seq)
        return applog

    async def _trusted(self, labels: dict[str, str]) -> bool:
        """Whether a container's labels name a process of an app of this rack: a valid app name of an app that
        exists (labels are anyone's who can reach the engine, or an image's), and not a build's."""
        app = labels.get(LABEL_APP, "")
        return bool(app) and not labels.get(LABEL_BUILD) and is_app_name(app) and await self._exists(app)

    async def _exists(self, app: str) -> bool:
        if app in self.known_apps:
            return True
        if await self.state.fetch_one("SELECT 1 FROM apps WHERE name = ?", (app,)) is not None:
            self.known_apps.add(app)
            return True
        return False

    def _add(self, applog: AppLog, lines: list[Line], run: bool = False) -> None:
        """Lines collected from a source; ``run``: one container's, in strictly increasing time
        (:meth:`AppLog.add_run`)."""
        now = asyncio.get_running_loop().time()
        if run:
            applog.add_run(lines, now)
        else:
            held = applog.lifecycle
            for line in lines:
                applog.add(line, now)
            if applog.lifecycle != held:  # a start or exit: the events table is read again soon
                self.lifecycle_added.set()
        advance_all(self.offsets, lines)
        if not self._release_now(applog, now):
            self.to_flush.add(applog)
            self._wake.set()

    def _release_now(self, applog: AppLog, now: float) -> bool:
        """Release the app's lines, write them to the history and hand them to its followers in this turn, when
        nothing holds them back (the ordering waits for no other source, no start or exit waits for the events
        table, no write of the history is under way in a thread): the common case of one process writing,
        two turns of the loop (the pump's, the flusher's) sooner. Whether it was done; if not, the pump and
        the flusher do it."""
        if applog in self.to_flush or self._writing:
            return False
        try:
            if applog.release_due(now, self.events_read_to) is not None:
                return False
        except Exception:  # the pump tries again, and says why
            return False
        lines = applog.unflushed
        if not lines:
            return True
        if text_bytes(lines) > INLINE_WRITE:
            self._released.set()  # released; the flusher writes them, in a thread
            return True
        work = [(applog, lines)]
        applog.unflushed = []
        newest = applog.history.segments[-1:]
        try:
            self._write(work)
        except Exception:  # the flusher tries again, and says why
            applog.unflushed[:0] = lines
            self._released.set()
            return True
        self._written(work)
        if applog.history.segments[-1:] != newest:  # a new segment: the cursors are saved at once
            self._rotated = True
            self._released.set()
        return True

    # ---- ordering and release --------------------------------------------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            now = loop.time()
            due: float | None = None
            to_flush, self.to_flush = self.to_flush, set()
            for applog in to_flush:
                try:
                    next_due = applog.release_due(now, self.events_read_to)
                except Exception as exc:  # never stop releasing every other app's lines
                    log.error("release", app=applog.name, error=type(exc).__name__)
                    next_due = now + 1.0
                if next_due is not None:
                    self.to_flush.add(applog)
                    due = next_due if due is None else min(due, next_due)
                if applog.unflushed:
                    self._released.set()
            if timer is not None:
                timer.cancel()
                timer = None
            if due is not None:
                timer = loop.call_at(due, self._wake.set)

    # ---- history and cursors ---------------------------------------------------------------------------

    async def _flusher(self) -> None:
        """Write what is released to the history at once (what comes during a write goes in the next one, so
        a burst is written in few batches), send it to the followers, and save the cursors now and then."""
        last_maintenance = time.monotonic()
        last_cursors = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.flush_interval):  # not wait_for: on Python 3.11 that is
                    await self._released.wait()  # a task of its own and two more turns of the loop per line
            self._released.clear()
            try:
                rotated = await self._flush()
                if self.unsaved and (rotated or time.monotonic() - last_cursors >= CURSOR_GAP):
                    last_cursors = time.monotonic()
                    await self._save_cursors()
                if time.monotonic() - last_maintenance > MAINTAIN_EVERY:
                    last_maintenance = time.monotonic()
                    await self._maintain()
            except Exception as exc:  # the disk or the database failed: keep collecting, try again
                log.error("history.flush", error=type(exc).__name__, message=str(exc))
                await asyncio.sleep(self.limits.flush_interval)

    async def _flush(self) -> bool:
        """Write the released lines to the history and send them to the followers; whether a history began
        a new segment (the cursors are saved at once then: a restart recovers only the newest one's)."""
        work = [(applog, applog.unflushed) for applog in self.logs.values() if applog.unflushed]
        for applog, _ in work:
            applog.unflushed = []
        newest = {applog.name: applog.history.segments[-1:] for applog, _ in work}
        rotated, self._rotated = self._rotated, False
        if work:
            try:
                if sum(text_bytes(lines) for _, lines in work) <= INLINE_WRITE:
                    self._write(work)  # a buffered append of a few lines: less than the hop to a thread
                else:
                    self._writing = True
                    try:
                        await asyncio.to_thread(self._write, work)
                    finally:
                        self._writing = False
            except BaseException:
                for applog, lines in work:
                    applog.unflushed[:0] = lines
                raise
            self._written(work)
        return rotated or any(applog.history.segments[-1:] != newest[applog.name] for applog, _ in work)

    def _written(self, work: list[tuple[AppLog, list[Line]]]) -> None:
        """Lines are in the history: out to the followers; their sources' cursors are saved next."""
        for applog, lines in work:
            applog.flushed_to(lines[-1].seq, lines)
        for applog, lines in work:
            advance_all(self.saved, lines)
            for src in sources(lines):
                self.source_app[src] = applog.name
                self.unsaved.add(src)

    async def _save_cursors(self) -> None:
        if self.unsaved:
            changed = list(self.unsaved)
            now = datetime.now(UTC).isoformat()
            rows = [
                (src, self.source_app.get(src, ""), self.saved[src].cursor, self.saved[src].count, now)
                for src in changed
                if src in self.saved
            ]
            async with self.state.transaction() as tx:
                await tx.db.executemany(
                    "INSERT INTO log_sources (src, app, cursor, count, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (src) DO UPDATE SET cursor = excluded.cursor, count = excluded.count, "
                    "updated = excluded.updated",
                    rows,
                )
            self.unsaved.difference_update(changed)

    @staticmethod
    def _write(work: list[tuple[AppLog, list[Line]]]) -> None:
        for applog, lines in work:
            applog.history.append(lines)

    async def _maintain(self) -> None:
        """Age out history, events and cursors; forget the apps that are gone."""
        now = time.time()
        for applog in list(self.logs.values()):
            applog.forget_stale(asyncio.get_running_loop().time())
            await asyncio.to_thread(applog.history.prune, now)
        names = {row["name"] for row in await self.state.fetch_all("SELECT name FROM apps")}
        self.known_apps = names
        await self.receipts.forget_old()
        for name, applog in list(self.logs.items()):
            if name in names or applog.sources or applog.subscribers or applog.held or applog.unflushed:
                continue
            del self.logs[name]
            await asyncio.to_thread(applog.history.remove)
            await self.state.execute("DELETE FROM log_sources WHERE app = ?", (name,))
            await self.state.execute("DELETE FROM events WHERE app = ?", (name,))
            for src in [src for src, owner in self.source_app.items() if owner == name]:
                for table in (self.source_app, self.saved, self.offsets):
                    table.pop(src, None)
            log.log("history.forget", app=name)
        cutoff = datetime.now(UTC) - timedelta(seconds=self.limits.max_age)
        await self.state.execute("DELETE FROM events WHERE time < ?", (ts_from_datetime(cutoff),))
        await self.state.execute("DELETE FROM log_sources WHERE src LIKE 'b:%' AND updated < ?", (cutoff.isoformat(),))
        try:  # a container's cursor goes with the container (an idle one keeps it however old)
            existing = {c["Id"] for c in await self.docker.containers({LABEL_RACK: self.rack}, all=True)}
        except RackError:
            return
        gone = [
            src
            for src in list(self.saved)
            if src.startswith("c:") and src[2:] not in existing and src[2:] not in self.readers
        ]
        for src in gone:
            await self.state.execute("DELETE FROM log_sources WHERE src = ?", (src,))
            for table in (self.source_app, self.saved, self.offsets):
                table.pop(src, None)
