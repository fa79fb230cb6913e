"""The Docker Engine's side of the local log collector: every container of the rack's apps is read through
the Engine's logs API from its cursor (``c:<container id>``) and its start and end, from the Engine's events,
become lines of its app (``d:<app>``). A thin layer over :class:`LogCollector`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import operator
import time
from dataclasses import dataclass, field

from shared.errors import NotFound, RackError
from shared.logfmt import Logger
from shared.logline import EVENT_SERVICE
from shared.logstore.applog import MAX_WAIT, AppLog, SourceProgress
from shared.logstore.lines import Line, after
from shared.logstore.timestamps import normalize_ts, ts_from_ns, ts_to_datetime, ts_to_ns
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_RELEASE, LABEL_TYPE, EngineEvent
from shared.provider.local.events import clean, docker_since, exit_message
from shared.provider.local.log_collector import LogCollector
from shared.provider.local.splitter import Splitter

log = Logger("logs")
BURST_BYTES = 16 << 10
BURST_GAP = 0.002
"""A follow whose reads come less than BURST_GAP apart with less than BURST_BYTES each lets the loop take a
turn before it reads on (the other sources, the followers' writes): a process writing fast would otherwise be
read a line or two at a time, and every step after (collecting, ordering, the history, the followers) taken
once per line. A line now and then is never held back. A turn, not a sleep: waiting 1 ms there cost `convox
logs` a tenth of its lines per second (bursts of 50,000 lines beside `docker logs -f`: 0.89x with it, 0.96x
with a turn, 0.92x with neither, medians of three to five runs)."""
FOLLOW_QUIET = 5.0
"""Seconds a running container's follow may be quiet before the collector looks whether its log went on
without it (one request for the log's last message)."""


@dataclass
class Resume:
    """Where a re-attach starts: Docker's ``since`` (inclusive) and how many lines at it to skip."""

    since: str
    skip: int
    recent: Recent = field(default_factory=lambda: Recent())


class Recent:
    """The last lines one follow collected, to know a line the Engine sends again: its follow of a ``local``
    log that rotates goes back and sends up to a thousand lines a second time (measured: Docker 28's own
    `docker logs -f` prints them twice). A line older than the newest collected is dropped only when it is one
    of these: stdout and stderr are timestamped apart, so a line a little older than the newest can be new.

    A line newer than every other is new: it is only kept (the common case, a deque's append). An older one is
    looked for among the kept from the newest back, until :data:`PAST` kept lines in a row are older than it
    (they are in the order they came, which is the time order but for stdout and stderr a little apart)."""

    KEEP = 4096
    PAST = 64

    def __init__(self) -> None:
        self.newest = ""
        self.kept: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=self.KEEP)

    def again(self, ts: str, data: bytes) -> bool:
        """Whether ``(ts, data)`` was collected already (and if not, it is now)."""
        if ts > self.newest:
            self.newest = ts
        elif self._kept(ts, data):
            return True
        self.kept.append((ts, data))
        return False

    def _kept(self, ts: str, data: bytes) -> bool:
        older = 0
        for kept_ts, kept_data in reversed(self.kept):
            if kept_ts == ts and kept_data == data:
                return True
            older = older + 1 if kept_ts < ts else 0
            if older >= self.PAST:
                return False
        return False


@dataclass
class ContainerEnd:
    """How a container's last run ended, as far as its events have told the collector."""

    killed: bool = False
    oom: bool = False
    died: int = 0
    """The time (ns) of the last ``die`` event of the container that was handled."""


class ContainerLogs(LogCollector):
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

    async def _on_event(self, event: EngineEvent) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        container = str(actor.get("ID") or event.get("id") or "")
        labels = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
        app = labels.get(LABEL_APP)
        if not container or not app or not await self._trusted(labels):
            return
        end = self.ends.setdefault(container, ContainerEnd())
        when = int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000)
        src = f"c:{container}"
        if action == "create":  # its lines are waited for (ordering) from now, before its start is seen
            applog = await self.applog(app)
            progress = SourceProgress(ts_from_ns(when), asyncio.get_running_loop().time(), pending=True)
            applog.sources.setdefault(src, progress)
        elif action == "kill":
            end.killed = True
        elif action == "oom":
            end.oom = True
        elif action == "destroy":
            self.ends.pop(container, None)
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
            message = exit_message(labels.get(LABEL_TYPE, ""), code, killed=end.killed, oom=end.oom)
            end.killed = end.oom = False
            await self._lifecycle(app, container, labels, message, when)
            end.died = max(end.died, when)
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
        progress = applog.sources.get(src)
        if progress is None or progress.pending:
            cursor = known.cursor if known else ""
            since = max(cursor, progress.ts) if progress else cursor
            progress = SourceProgress(since, asyncio.get_running_loop().time(), True)
            applog.sources[src] = progress
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
                if progress.catching_up and running:  # to the end first, then follow
                    if await self._follow(applog, container, src, service, release, pid, False, tty, False) is None:
                        await asyncio.sleep(backoff)
                        backoff = min(2.0, backoff * 2)
                        continue
                    progress.catching_up = False
                    self.to_flush.add(applog)
                    self._wake.set()
                received = await self._follow(applog, container, src, service, release, pid, running, tty)
                if received is None:  # the connection dropped: the Engine is going or gone
                    progress.catching_up = True
                    progress.seen = asyncio.get_running_loop().time()
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
            end = self.ends.get(container)
            if finished > "1970" and end is not None and end.died < ts_to_ns(finished):
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
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            since = docker_since(resume.since) if resume.since else ""
            quiet = FOLLOW_QUIET if running else None
            logs = self.docker.logs(container, since=since, follow=running, tty=tty, quiet=quiet)
            async with contextlib.aclosing(logs) as chunks:
                async for chunk in chunks:  # closed at once when the reader is cancelled (the collector stopping)
                    if not chunk and await self._went_on(container, src, tty):
                        log.log("reader.refollow", id=container[:12])
                        return received  # Docker's follow stopped (a rotated log): follow again from the cursor
                    splitter.feed(chunk, pieces)
                    if pieces:
                        received += self._collect(applog, src, service, release, pid, pieces, resume)
                        pieces = []
                    now = loop.time()
                    if len(chunk) < BURST_BYTES and now - last < BURST_GAP:
                        await asyncio.sleep(0)  # a burst: let the next read grow (see BURST_GAP)
                    last = now
        except NotFound:
            return received
        except RackError:
            return None
        except (ValueError, IndexError) as exc:  # a stream the reader does not understand: read it again
            log.error("reader", id=container[:12], error=type(exc).__name__)
            return None
        if splitter.torn:  # the stream ended inside a message: cut off
            return None
        if final:
            splitter.finish(pieces)
        if pieces:
            received += self._collect(applog, src, service, release, pid, pieces, resume)
        return received

    async def _went_on(self, container: str, src: str, tty: bool) -> bool:
        """Whether the container's log holds a message newer than what was collected from it: its follow was
        quiet, and Docker's follow of a ``local`` log stops for good at a rotation of its file."""
        known = self.offsets.get(src)
        cursor = known.cursor if known else ""
        try:
            splitter = Splitter(tty, self.limits.max_line)
            pieces: list[tuple[str, bytes]] = []
            async with contextlib.aclosing(self.docker.logs(container, follow=False, tty=tty, tail=1)) as chunks:
                async for chunk in chunks:
                    splitter.feed(chunk, pieces)
            splitter.finish(pieces)
        except RackError:
            return False
        return any(after(src, ts, cursor) for ts, _ in pieces)

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
        since = resume.since
        recent = resume.recent
        stamps = [ts for ts, _ in pieces]
        run = stamps[0] > since and stamps[0] > recent.newest and all(map(operator.lt, stamps, stamps[1:]))
        if run:  # the common case: every line newer than the cursor and than any seen, in strictly rising time
            recent.newest = stamps[-1]
            recent.kept.extend(pieces)
            lines = [Line(ts, service, release, pid, data.decode("utf-8", "backslashreplace"), src, ts)
                     for ts, data in pieces]  # fmt: skip
            return self._collected(applog, src, stamps[-1], lines, True)
        lines = []
        append = lines.append
        for ts, data in pieces:  # once per line: the common case first, inline
            if ts <= since:
                if ts < since:
                    continue
                if resume.skip > 0:  # lines at the cursor's own timestamp that were collected already
                    resume.skip -= 1
                    continue
            if ts > recent.newest:  # newer than any: new (Recent.again's common case)
                recent.newest = ts
                recent.kept.append((ts, data))
            elif recent.again(ts, data):  # sent again by the Engine (its follow of a rotating local log)
                continue
            append(Line(ts, service, release, pid, data.decode("utf-8", "backslashreplace"), src, ts))
        return self._collected(applog, src, max(stamps), lines, False)

    def _collected(self, applog: AppLog, src: str, newest: str, lines: list[Line], run: bool) -> int:
        """A read's new lines into the store; ``newest``: the latest time the read delivered (the ordering
        waits for the source up to it); ``run``: the lines are in strictly rising time."""
        progress = applog.sources.get(src)
        if progress is not None:
            progress.seen = asyncio.get_running_loop().time()
            if newest > progress.ts:
                progress.ts = newest
        if lines:
            late = time.time() - ts_to_datetime(lines[-1].ts).timestamp()
            applog.lag = applog.lag * 0.8 + min(max(late, 0.0), MAX_WAIT) * 0.2
            self._add(applog, lines, run)
        return len(lines)
