"""Logs on the local provider: one collector (in the logs service) reads every log of the rack's apps into
the log store (:mod:`shared.logstore`: a history per app on disk, in time order, fanned out to followers);
the rack's own log is read from ``DATA/logs/rack.log``.

Where lines come from, each a *source* with a cursor that is persisted once its lines are in the history
(``log_sources``), so that a restart of the logs service or of the Docker Engine resumes exactly where the
history ends, without duplicates and without losing what was written meanwhile:

- ``c:<container id>``: the container's log through the Engine's logs API with timestamps (cursor: Docker's
  timestamp of the last line and how many lines had it; re-attached with ``since=``). Lines longer than
  16 KiB, which Docker splits, are joined again; bytes that are not UTF-8 are escaped (``\\xff``).
- ``d:<app>``: process started / stopped / crashed, from the Engine's events (cursor: the event's time).
- ``e:<app>``: platform events other processes write to the ``events`` table (cursor: the row id).
- ``b:<build id>``: a build's output, tailed from ``DATA/builds/ID.log`` (cursor: the byte offset).

Docker's events are sources too: a process's start is added before its log is read (its lines cannot
overtake it), and a container created but not started yet, or read to its end while its exit event has not
come, is a *pending* source, waited for (for the hold at most) until the event comes. History segments are
``DATA/logs/apps/APP/<first seq>.log``, written every few hundredths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.errors import BadRequest, NotFound, RackError, Unavailable
from shared.logfmt import Logger
from shared.logline import EVENT_SERVICE
from shared.logstore.applog import MAX_WAIT, AppLog, SourceProgress, matcher
from shared.logstore.history import READ_CHUNK, History, Limits
from shared.logstore.lines import Line, Offset, advance_all, after, text_of
from shared.logstore.racklog import read_rack_log
from shared.logstore.settings import LogStoreSettings
from shared.logstore.timestamps import (
    normalize_ts,
    now_ts,
    ts_from_datetime,
    ts_from_ns,
    ts_to_datetime,
    ts_to_ns,
)
from shared.models import invalid_app_name
from shared.names import is_app_name, is_id, under
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_RELEASE, LABEL_TYPE, Docker
from shared.provider.local.events import Events, clean, docker_since, exit_message
from shared.provider.local.receipts import Receipts
from shared.provider.local.splitter import Splitter
from shared.provider.local.state import State

log = Logger("logs")

MIB = 1024 * 1024
LABEL_BUILD = "convox.build"
BUILD_SERVICE = "build"
MAINTAIN_EVERY = 30.0
CURSOR_GAP = 0.05
"""Seconds between two saves of the sources' cursors at most (the history itself is written, and its lines
sent to the followers, as soon as they are released: a line reaches a follower a write later, not a batch
later). Cursors that lag the history are safe: a restart takes the newest segment's lines' cursors too."""
EVENT_WRITE_SLACK = 0.1
"""Seconds between an event's timestamp and its row being committed, at most (what the events' reader allows)."""
BUILD_CATCH_UP = 600.0
"""A build that ended this long before the collector first saw it is not copied into the app's log."""


# ---- the provider's logs ---------------------------------------------------------------------------------


def _read_bytes(path: Path, offset: int, size: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(size), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return b"", 0


def _app_dirs(root: Path) -> list[str]:
    """The apps with a history on disk: directories named like an app (anything else there is not ours)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if is_app_name(p.name) and p.is_dir() and not p.is_symlink())


@dataclass
class Resume:
    """Where a re-attach starts: Docker's ``since`` (inclusive) and how many lines at it to skip."""

    since: str
    skip: int


@dataclass
class ContainerEnd:
    """How a container's last run ended, as far as its events have told the collector."""

    killed: bool = False
    oom: bool = False
    died: int = 0
    """The time (ns) of the last ``die`` event of the container that was handled."""


class LocalLogs:
    def __init__(
        self, state: State, docker: Docker, apps: LocalApps, rack: str, data_dir: Path, limits: Limits | None = None
    ) -> None:
        self.state = state
        self.docker = docker
        self.apps = apps
        self.rack = rack
        self.events = Events(state)
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
        self.watch: dict[str, ContainerEnd] = {}
        self.to_flush: set[AppLog] = set()
        self.known_apps: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._released = asyncio.Event()
        """Set when lines are released: the flusher writes them (and so sends them to the followers) soon."""
        self._opening: dict[str, asyncio.Lock] = {}
        self._docker_down = False
        self.events_read_to = ""
        """Every platform event written before this time has been read from the events table."""

    # ---- the contract ----------------------------------------------------------------------------------

    async def event(
        self, app: str, message: str, *, release: str = "", pid: str = "", service: str = EVENT_SERVICE
    ) -> None:
        await self.events.emit(app, message, release=release, pid=pid, service=service)

    async def app(
        self,
        app: str,
        *,
        since: datetime | None = None,
        follow: bool = True,
        service: str = "",
        pid: str = "",
        filter: str = "",
    ) -> AsyncIterator[list[bytes]]:
        await self.apps.get(app)
        if not self.running:
            raise Unavailable("app logs are served by the logs service only")
        if pid:
            pid = await self._check_pid(app, pid)
        applog = await self.applog(app)
        match = matcher(service, pid, filter)
        yield []
        async for batch in applog.read(ts_from_datetime(since) if since else "", follow, match):
            yield [line.render() for line in batch]

    async def system(
        self, *, since: datetime | None = None, follow: bool = True, service: str = "", filter: str = ""
    ) -> AsyncIterator[list[bytes]]:
        match = matcher(service, "", filter)
        yield []
        since_ts = ts_from_datetime(since) if since else ""
        async for batch in read_rack_log(self.rack_log, since_ts, follow, self.limits.poll_interval):
            out = [line.render() for line in batch if match is None or match(line)]
            if out:
                yield out

    async def collect(self) -> None:
        """Start collecting (the logs service does, once): resume every source where the history ends."""
        if self.running:
            return
        for row in await self.state.fetch_all("SELECT src, app, cursor, count FROM log_sources"):
            self.saved[row["src"]] = Offset(row["cursor"], row["count"])
            self.source_app[row["src"]] = row["app"]
        for name in await asyncio.to_thread(_app_dirs, self.apps_dir):
            await self.applog(name)
        self.offsets = {src: replace(offset) for src, offset in self.saved.items()}
        self.running = True
        jobs = (self._pump, self._flusher, self._watch_docker, self._tail_events, self._tail_builds)
        for job in (*jobs, self.receipts.beat_forever):
            self.tasks.append(asyncio.create_task(job(), name=f"logs {job.__name__}"))
        log.log("collector.start", apps=len(self.logs), sources=len(self.saved))

    async def close(self) -> None:
        if not self.running:
            return
        self.running = False
        pending = [*self.tasks, *self.readers.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.tasks.clear()
        with contextlib.suppress(Exception):
            await self.receipts.gone()
        for applog in self.logs.values():  # what is held is released: it is collected
            applog.release([entry[3] for entry in sorted(applog.heap + applog.incoming)])
            applog.heap.clear()
            applog.incoming.clear()
        with contextlib.suppress(Exception):
            await self._flush()
            await self._save_cursors()
        for applog in self.logs.values():
            await asyncio.to_thread(applog.history.close)

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

    async def _check_pid(self, app: str, pid: str) -> str:
        pid = pid[:12]
        if not pid.isalnum():
            raise NotFound(f"no such process: {pid}")
        for src, owner in list(self.source_app.items()):
            if owner == app and src.startswith(f"c:{pid}"):
                return pid
        try:
            info = await self.docker.inspect(pid)
        except NotFound:
            raise NotFound(f"no such process: {pid}") from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_RACK) != self.rack or labels.get(LABEL_APP) != app:
            raise NotFound(f"no such process: {pid}")
        return pid

    def _add(self, applog: AppLog, lines: list[Line]) -> None:
        now = asyncio.get_running_loop().time()
        for line in lines:
            applog.add(line, now)
        advance_all(self.offsets, lines)
        self.to_flush.add(applog)
        self._wake.set()

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
                await asyncio.wait_for(self._released.wait(), self.limits.flush_interval)
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
        if work:
            try:
                await asyncio.to_thread(self._write, work)
            except BaseException:
                for applog, lines in work:
                    applog.unflushed[:0] = lines
                raise
            for applog, lines in work:  # in the history: out to the followers (their cursors are saved next)
                applog.flushed_to(lines[-1].seq)
            for applog, lines in work:
                advance_all(self.saved, lines)
                for src in {line.src for line in lines if line.src}:
                    self.source_app[src] = applog.name
                    self.unsaved.add(src)
        return any(applog.history.segments[-1:] != newest[applog.name] for applog, _ in work)

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

    # ---- containers ------------------------------------------------------------------------------------

    async def _watch_docker(self) -> None:
        filters = {"type": ["container"], "label": [f"{LABEL_RACK}={self.rack}"]}
        backoff = 0.2
        while True:
            began = time.time_ns()
            try:
                await self._scan()
                cursors = [int(o.cursor) for src, o in self.offsets.items() if src.startswith("d:")]
                since = max(min(cursors, default=began), began - 3600 * 1_000_000_000)
                if self._docker_down:
                    self._docker_down = False
                    log.log("docker.reconnect")
                async for event in self.docker.events(filters, since=f"{since // 10**9}.{since % 10**9:09d}"):
                    backoff = 0.2
                    try:
                        await self._on_event(event)
                    except RackError:
                        raise
                    except Exception as exc:  # one odd event must not stop the watch
                        log.error("docker.event", error=type(exc).__name__)
            except Exception as exc:
                if not self._docker_down:
                    self._docker_down = True
                    message = exc.message if isinstance(exc, RackError) else type(exc).__name__
                    log.error("docker.events", message=message)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    async def _scan(self) -> None:
        for container in await self.docker.containers({LABEL_RACK: self.rack}, all=True):
            labels = container.get("Labels") or {}
            if await self._trusted(labels):
                await self._attach(container["Id"], labels)

    async def _on_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        container = str(actor.get("ID") or event.get("id") or "")
        labels = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
        app = labels.get(LABEL_APP)
        if not container or not app or not await self._trusted(labels):
            return
        watch = self.watch.setdefault(container, ContainerEnd())
        when = int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000)
        src = f"c:{container}"
        if action == "create":  # its lines are waited for (ordering) from now, before its start is seen
            applog = await self.applog(app)
            mark = SourceProgress(ts_from_ns(when), asyncio.get_running_loop().time(), pending=True)
            applog.sources.setdefault(src, mark)
        elif action == "kill":
            watch.killed = True
        elif action == "oom":
            watch.oom = True
        elif action == "destroy":
            self.watch.pop(container, None)
            if container not in self.readers and app in self.logs:
                self.logs[app].sources.pop(src, None)
        if action == "start":  # the event first, then the reader: its lines cannot go out before it
            await self._lifecycle(app, container, labels, f"{labels.get(LABEL_TYPE, '')} started", when)
            await self._attach(container, labels)
        elif action == "die":
            try:
                code = int(labels.get("exitCode", "0"))
            except ValueError:
                code = -1
            message = exit_message(labels.get(LABEL_TYPE, ""), code, killed=watch.killed, oom=watch.oom)
            watch.killed = watch.oom = False
            await self._lifecycle(app, container, labels, message, when)
            watch.died = max(watch.died, when)
            owner = self.logs.get(app)
            awaited = owner.sources.get(src) if owner is not None else None
            if owner is not None and awaited is not None and awaited.pending:  # its exit, awaited: here it is
                del owner.sources[src]
                self.to_flush.add(owner)
                self._wake.set()

    async def _lifecycle(self, app: str, container: str, labels: dict[str, str], message: str, when: int) -> None:
        """A process started or ended (Docker's event at ``when``, in nanoseconds) as a line of its app."""
        src = f"d:{app}"
        known = self.offsets.get(src)
        if known is not None and int(known.cursor) >= when:
            return
        if not await self._exists(app):
            return
        line = Line(ts_from_ns(when), EVENT_SERVICE, labels.get(LABEL_RELEASE, ""), container[:12], message, src)
        line.cur = str(when)
        self._add(await self.applog(app), [line])

    async def _attach(self, container: str, labels: dict[str, str]) -> None:
        """Read a container (again): its lines are waited for (ordering) from now on, before anything that
        comes after this (its exit, other processes' lines) goes out."""
        if not self.running:
            return
        if container in self.readers:
            self.reread.add(container)
            return
        applog = await self.applog(labels[LABEL_APP])
        src = f"c:{container}"
        known = self.offsets.get(src)
        cursor = known.cursor if known else ""
        created = applog.sources.get(src)  # marked at its create event: none of its lines is older
        if created is not None:
            cursor = max(cursor, created.ts)
        applog.sources[src] = SourceProgress(cursor, asyncio.get_running_loop().time(), catching_up=True)
        self._ensure_reader(container, labels)

    def _ensure_reader(self, container: str, labels: dict[str, str]) -> None:
        if not self.running:
            return
        if container in self.readers:
            self.reread.add(container)
            return
        self.readers[container] = asyncio.create_task(self._read(container, labels), name=f"logs {container[:12]}")

    async def _read(self, container: str, labels: dict[str, str]) -> None:
        """Follow one container's log from its cursor until it has stopped and its log is read. It first
        reads to the log's end (until then, the app's newer lines wait for it), then follows."""
        app = labels[LABEL_APP]
        src = f"c:{container}"
        self.source_app[src] = app
        service = clean(labels.get(LABEL_TYPE, ""))
        release = clean(labels.get(LABEL_RELEASE, ""))
        pid = container[:12]
        applog = await self.applog(app)
        known = self.offsets.get(src)
        mark = applog.sources.get(src)
        if mark is None or mark.pending:
            cursor = known.cursor if known else ""
            mark = SourceProgress(max(cursor, mark.ts) if mark else cursor, asyncio.get_running_loop().time(), True)
            applog.sources[src] = mark
        backoff = 0.1
        finished = ""
        try:
            while True:
                self.reread.discard(container)
                try:
                    info = await self.docker.inspect(container)
                except NotFound:
                    return
                except Exception as exc:
                    if not isinstance(exc, RackError):
                        log.error("reader", id=container[:12], error=type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                state = info.get("State") or {}
                running = bool(state.get("Running")) or bool(state.get("Restarting"))
                tty = bool((info.get("Config") or {}).get("Tty"))
                if mark.catching_up and running:  # to the end first, then follow
                    if await self._follow(applog, container, src, service, release, pid, False, tty, False) is None:
                        await asyncio.sleep(backoff)
                        backoff = min(2.0, backoff * 2)
                        continue
                    mark.catching_up = False
                    self.to_flush.add(applog)
                    self._wake.set()
                received = await self._follow(applog, container, src, service, release, pid, running, tty)
                if received is None:  # the connection dropped: the Engine is going or gone
                    mark.catching_up = True
                    mark.seen = asyncio.get_running_loop().time()
                    await asyncio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                backoff = 0.1
                if not running and container not in self.reread:
                    finished = normalize_ts(str(state.get("FinishedAt") or "")) or ""
                    if labels.get(LABEL_ONEOFF) == "true":  # read to its end: it may be removed now
                        await self.receipts.read(container)
                    return
                if not received:
                    await asyncio.sleep(0.05)
        finally:
            applog.sources.pop(src, None)
            watch = self.watch.get(container)
            if finished > "1970" and watch is not None and watch.died < ts_to_ns(finished):
                # read to its end, but its exit (Docker's die event, not earlier than this) has not come yet:
                # what is later waits for it
                applog.sources[src] = SourceProgress(finished, asyncio.get_running_loop().time(), pending=True)
            if self.readers.get(container) is asyncio.current_task():
                del self.readers[container]
            self._wake.set()
            if container in self.reread and self.running:  # started again while this reader was ending
                self._ensure_reader(container, labels)

    async def _follow(
        self,
        applog: AppLog,
        container: str,
        src: str,
        service: str,
        release: str,
        pid: str,
        running: bool,
        tty: bool,
        final: bool = True,
    ) -> int | None:
        """Read the log from the cursor (to its end, or while the container runs); how many lines came,
        or ``None`` when the connection dropped (nothing past the last whole line counts then). ``final``:
        the log has ended, so a line held for its continuation is whole."""
        known = self.offsets.get(src)
        resume = Resume(known.cursor if known else "", known.count if known else 0)
        splitter = Splitter(tty, self.limits.max_line)
        received = 0
        pieces: list[tuple[str, bytes]] = []
        try:
            async for batch in self.docker.logs(
                container, since=docker_since(resume.since) if resume.since else "", follow=running, tty=tty
            ):
                for stream, payload in batch:
                    splitter.feed(stream, payload, pieces)
                if pieces:
                    received += self._collect(applog, src, service, release, pid, pieces, resume)
                    pieces = []
        except NotFound:
            return received
        except RackError:
            return None
        except (ValueError, IndexError) as exc:  # a stream the reader does not understand: read it again
            log.error("reader", id=container[:12], error=type(exc).__name__)
            return None
        if final:
            splitter.finish(pieces)
        if pieces:
            received += self._collect(applog, src, service, release, pid, pieces, resume)
        return received

    def _collect(
        self,
        applog: AppLog,
        src: str,
        service: str,
        release: str,
        pid: str,
        pieces: list[tuple[str, bytes]],
        resume: Resume,
    ) -> int:
        lines: list[Line] = []
        since = resume.since
        for ts, data in pieces:
            if since and ts <= since:
                if ts < since:
                    continue
                if resume.skip > 0:  # lines at the cursor's own timestamp that were collected already
                    resume.skip -= 1
                    continue
            lines.append(Line(ts, service, release, pid, text_of(data), src, ts))
        mark = applog.sources.get(src)
        if mark is not None:
            mark.seen = asyncio.get_running_loop().time()
            mark.ts = max(mark.ts, max(ts for ts, _ in pieces))
        if lines:
            late = time.time() - ts_to_datetime(lines[-1].ts).timestamp()
            applog.lag = applog.lag * 0.8 + min(max(late, 0.0), MAX_WAIT) * 0.2
            self._add(applog, lines)
        return len(lines)

    # ---- platform events and builds --------------------------------------------------------------------

    async def _tail_events(self) -> None:
        last = 0
        while True:
            polled = ts_from_ns(time.time_ns() - int(EVENT_WRITE_SLACK * 1e9))
            try:
                rows = await self.state.fetch_all(
                    "SELECT id, app, time, service, release, pid, message FROM events WHERE id > ? "
                    "ORDER BY id LIMIT 1000",
                    (last,),
                )
                for row in rows:
                    src = f"e:{row['app']}"
                    known = self.offsets.get(src)
                    if is_app_name(row["app"]) and (known is None or int(known.cursor) < row["id"]):
                        ts = normalize_ts(row["time"]) or now_ts()
                        line = Line(ts, row["service"], row["release"], row["pid"], row["message"], src, str(row["id"]))
                        self._add(await self.applog(row["app"]), [line])
                    last = row["id"]
            except Exception as exc:  # the database is busy or the disk failed: look again soon
                log.error("events.read", error=type(exc).__name__)
                await asyncio.sleep(self.limits.poll_interval)
                continue
            if len(rows) < 1000:
                self.events_read_to = polled
                self.to_flush.update(applog for applog in self.logs.values() if applog.held)
                self._wake.set()
                await asyncio.sleep(self.limits.poll_interval)

    async def _tail_builds(self) -> None:
        done: set[str] = set()
        started = time.time()
        while True:
            try:
                await self._builds_once(done, started)
            except Exception as exc:
                log.error("builds.read", error=type(exc).__name__)
            await asyncio.sleep(self.limits.poll_interval * 2)

    async def _builds_once(self, done: set[str], started: float) -> None:
        cutoff = (datetime.now(UTC) - timedelta(seconds=self.limits.max_age)).isoformat()
        rows = await self.state.fetch_all("SELECT id, app, status, ended FROM builds WHERE created >= ?", (cutoff,))
        for row in rows:
            build = row["id"]
            if build in done:
                continue
            if not is_id(build) or not is_app_name(row["app"]):  # a row no build of this rack wrote
                done.add(build)
                continue
            src = f"b:{build}"
            ended = row["status"] in ("complete", "failed")
            known = self.offsets.get(src)
            if known is None and ended and row["ended"]:
                ended_at = datetime.fromisoformat(row["ended"]).timestamp()
                if ended_at < started - BUILD_CATCH_UP:  # long over before this collector: not news
                    done.add(build)
                    continue
            offset = int(known.cursor) if known else 0
            path = under(self.builds_dir, f"{build}.log")
            data, size = await asyncio.to_thread(_read_bytes, path, offset, READ_CHUNK)
            cut = data.rfind(b"\n") + 1
            whole = data[:cut]
            rest = data[cut:]
            finished = ended and offset + len(data) >= size
            lines: list[Line] = []
            position = offset
            pieces = whole.split(b"\n")[:-1] if whole else []
            if finished and rest:
                pieces.append(rest)
            for piece in pieces:
                position += len(piece) + 1
                text = text_of(piece.rstrip(b"\r"))
                cursor = str(min(position, offset + len(data)))
                lines.append(Line(now_ts(), BUILD_SERVICE, build, "", text, src, cursor))
            if lines and await self._exists(row["app"]):
                self._add(await self.applog(row["app"]), lines)
            if finished:
                done.add(build)


__all__ = ["LocalLogs"]

