"""Logs on the local provider: one collector (the workers' loop ``logs.collect``, run by the logs service)
reads every log of the rack's apps into the log store (:mod:`shared.logstore`: a history per app on disk, in
time order, fanned out to followers); the rack's own log is read from ``DATA/logs/rack.log``.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from shared.errors import NotFound, Unavailable
from shared.logfmt import Logger
from shared.logline import EVENT_SERVICE
from shared.logstore.applog import matcher
from shared.logstore.lines import Line, Offset, render_all, render_block
from shared.logstore.racklog import read_rack_log
from shared.logstore.timestamps import ts_from_datetime
from shared.names import is_app_name
from shared.provider.contract import Sink
from shared.provider.local.docker import LABEL_APP, LABEL_RACK
from shared.provider.local.log_containers import ContainerLogs
from shared.provider.local.log_platform import PlatformLogs

log = Logger("logs")


def _app_dirs(root: Path) -> list[str]:
    """The apps with a history on disk: directories named like an app (anything else there is not ours)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if is_app_name(p.name) and p.is_dir() and not p.is_symlink())


class LocalLogs(ContainerLogs, PlatformLogs):
    """The local provider's ``LogsAPI``: the collector (:class:`ContainerLogs`, :class:`PlatformLogs` over
    :class:`~shared.provider.local.log_collector.LogCollector`) and the reading of apps' and the rack's logs."""

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
        sink: Sink | None = None,
    ) -> AsyncIterator[list[bytes]]:
        await self.apps.get(app)
        if not self.running:
            raise Unavailable("app logs are served by the logs service only")
        if pid:
            pid = await self._check_pid(app, pid)
        applog = await self.applog(app)
        match = matcher(service, pid, filter)
        direct: Callable[[list[Line]], bool] | None = None
        if sink is not None and follow:
            given = sink

            def direct(lines: list[Line]) -> bool:
                return given([render_block(lines)])  # written at once, as one frame

        yield []
        async for batch in applog.read(ts_from_datetime(since) if since else "", follow, match, direct):
            yield render_all(batch)

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

    async def start(self) -> None:
        """Start collecting: resume every source where the history ends. The start step of the workers' loop
        ``logs.collect`` (:meth:`shared.provider.local.LocalProvider.workers`, run by the logs service, which
        serves the streams: the store hands new lines to its followers in this process)."""
        if self.running:
            return
        for row in await self.state.fetch_all("SELECT src, app, cursor, count FROM log_sources"):
            self.saved[row["src"]] = Offset(row["cursor"], row["count"])
            self.source_app[row["src"]] = row["app"]
        for name in await asyncio.to_thread(_app_dirs, self.apps_dir):
            await self.applog(name)
        self.offsets = {src: replace(offset) for src, offset in self.saved.items()}
        self.running = True
        self._spawn()
        log.log("collector.start", apps=len(self.logs), sources=len(self.saved))

    def _spawn(self) -> None:
        """Each of the collector's jobs that is not running (none ends by itself) is started."""
        jobs = (self._pump, self._flusher, self._watch_docker, self._tail_events, self._tail_builds)
        running = {task.get_name(): task for task in self.tasks if not task.done()}
        self.tasks = list(running.values())
        for job in (*jobs, self.receipts.beat_forever):
            if f"logs {job.__name__}" not in running:
                self.tasks.append(asyncio.create_task(job(), name=f"logs {job.__name__}"))

    async def collect(self) -> None:
        """The body of the workers' loop ``logs.collect``, after :meth:`start`: the collector's jobs, until
        cancelled; then collecting stops (:meth:`close`: what is held is written, the cursors saved). A job that
        ends raises here (the loop is restarted, and with it that job)."""
        if not self.running:
            await self.start()
        self._spawn()
        try:
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await asyncio.shield(self.close())
            raise
        for task in done:
            task.result()
        raise RuntimeError(f"the collector's job {next(iter(done)).get_name()} ended")

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
            applog.release([entry[3] for entry in sorted(applog.heap + applog.entries())])
            applog.heap.clear()
            applog.incoming.clear()
        with contextlib.suppress(Exception):
            await self._flush()
            await self._save_cursors()
        for applog in self.logs.values():
            await asyncio.to_thread(applog.history.close)
        self.logs.clear()  # a next start opens them again
        self.readers.clear()

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


__all__ = ["LocalLogs"]
