"""The rack's own sources of the local log collector: platform events other processes write to the
``events`` table (``e:<app>``) and builds' output, tailed from ``DATA/builds/ID.log`` (``b:<build id>``)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.logfmt import Logger
from shared.logstore.history import READ_CHUNK
from shared.logstore.lines import Line, text_of
from shared.logstore.timestamps import normalize_ts, now_ts, ts_from_ns
from shared.names import is_app_name, is_id, under
from shared.provider.local.log_collector import LogCollector

log = Logger("logs")

BUILD_SERVICE = "build"
EVENT_WRITE_SLACK = 0.1
"""Seconds between an event's timestamp and its row being committed, at most (what the events' reader allows)."""
EVENTS_IDLE = 2.0
"""Seconds between two reads of the events table when no ring says there is something new."""
BUILDS_IDLE = 1.0
"""Seconds between two looks at the builds when none is going on (a new one is seen within that)."""
BUILD_CATCH_UP = 600.0
"""A build that ended this long before the collector first saw it is not copied into the app's log."""


def _read_bytes(path: Path, offset: int, size: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(size), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return b"", 0


class PlatformLogs(LogCollector):
    async def _tail_events(self) -> None:
        last = 0
        while True:
            rung = self.bell.rung if self.bell is not None else 0
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
                await self._until_rung(rung)

    async def _until_rung(self, rung: int) -> None:
        """Until the events table is worth reading again. While a process's start or exit is held for it (its
        lines wait until the table is read past their time, :meth:`AppLog.release_due`), every poll interval.
        Otherwise once an event may have been written: the bell rang since ``rung`` (then a moment, for the
        other events of the same change), a start or exit came, or :data:`EVENTS_IDLE` passed (a ring can go
        unheard). Without a bell, the poll interval."""
        self.lifecycle_added.clear()
        if self.bell is None or any(applog.lifecycle for applog in self.logs.values()):
            await asyncio.sleep(self.limits.poll_interval)
            return
        waits = [
            asyncio.ensure_future(self.bell.wait(rung, EVENTS_IDLE)),
            asyncio.ensure_future(self.lifecycle_added.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=EVENTS_IDLE, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        await asyncio.sleep(min(self.limits.poll_interval, EVENT_WRITE_SLACK))

    async def _tail_builds(self) -> None:
        done: set[str] = set()
        started = time.time()
        while True:
            active = True
            try:
                active = await self._builds_once(done, started)
            except Exception as exc:
                log.error("builds.read", error=type(exc).__name__)
            await asyncio.sleep(self.limits.poll_interval * 2 if active else BUILDS_IDLE)

    async def _builds_once(self, done: set[str], started: float) -> bool:
        """Copy what the builds wrote since the last time; whether one is still going on."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=self.limits.max_age)).isoformat()
        rows = await self.state.fetch_all(
            "SELECT id, app, status, release, ended FROM builds WHERE created >= ?", (cutoff,)
        )
        for row in rows:
            build = row["id"]
            if build in done:
                continue
            if not is_id(build) or not is_app_name(row["app"]):  # a row no build of this rack wrote
                done.add(build)
                continue
            src = f"b:{build}"
            # complete only once its release exists (see builds.to_build)
            ended = row["status"] == "failed" or (row["status"] == "complete" and bool(row["release"]))
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
        return any(row["id"] not in done for row in rows)
