"""Logs on the local provider: one collector (in the logs service) reads every log of the rack's apps into a
history per app on disk and fans it out to followers; the rack's own log is read from ``DATA/logs/rack.log``.

Where lines come from, each a *source* with a cursor that is persisted once its lines are in the history
(``log_sources``), so that a restart of the logs service or of the Docker Engine resumes exactly where the
history ends, without duplicates and without losing what was written meanwhile:

- ``c:<container id>``: the container's log through the Engine's logs API with timestamps (cursor: Docker's
  timestamp of the last line and how many lines had it; re-attached with ``since=``). Lines longer than
  16 KiB, which Docker splits, are joined again; bytes that are not UTF-8 are escaped (``\\xff``).
- ``d:<app>``: process started / stopped / crashed, from the Engine's events (cursor: the event's time).
- ``e:<app>``: platform events other processes write to the ``events`` table (cursor: the row id).
- ``b:<build id>``: a build's output, tailed from ``DATA/builds/ID.log`` (cursor: the byte offset).

Order: lines wait in a per-app heap ordered by time until every container of the app that is delivering
(it sent something within ``order_window`` seconds, plus three times the Engine's recent delivery lag) has
delivered a line at least as late, or for four times that at most; then they get the app's next sequence
number and go, in time order, to the history and then to every follower. A quiet process is not waited for, so a
lone line goes out at once; a container re-attached after a restart is waited for until it has read up to
its end. Docker's events are sources too: a process's start is added before its log is read (its lines
cannot overtake it), and a container created but not started yet, or read to its end while its exit event
has not come, is waited for (for the hold at most) until the event comes.

The order is a guarantee, not a best effort: a line that still comes later than lines already released with
later times (a source lagging past all of this: an event row committed late, a loaded Engine) goes out with
the time of the newest released line, the time it is emitted with, rather than its own earlier one (its
source's cursor keeps its own). A follower's stream and the history are in time order whatever the lag.

History: ``DATA/logs/apps/APP/<first seq>.log`` segments of tab-separated lines, bounded per app by bytes and
age, written every few hundredths of a second. A follower is sent a line only once it is written there: a
collector killed at any point loses none that a follower saw (the next one resumes where the history ends),
so a follow resumed across a restart neither misses a line nor is sent one twice. A follower reads the
history from ``since``, then the lines still in memory, then subscribes; its queue is bounded, and a
follower that falls behind (a slow client) is not waited for: it catches up from the history and memory by
sequence number, then subscribes again. The collector never blocks on a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import shutil
import time
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from shared.errors import BadRequest, NotFound, RackError, Unavailable
from shared.logfmt import Logger
from shared.logline import EVENT_SERVICE, line_source, wanted
from shared.models import invalid_app_name
from shared.names import is_app_name, is_id, under
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_RELEASE, LABEL_TYPE, Docker
from shared.provider.local.events import (
    TS_WIDTH,
    Events,
    clean,
    docker_since,
    exit_message,
    normalize_ts,
    now_ts,
    ts_from_datetime,
    ts_from_ns,
    ts_to_datetime,
    ts_to_ns,
)
from shared.provider.local.receipts import Receipts
from shared.provider.local.state import State

log = Logger("logs")

MIB = 1024 * 1024
PARTIAL = 16 * 1024
"""Docker splits a longer line into messages of this size (json-file and local drivers alike)."""
READ_CHUNK = 4 * MIB
LABEL_BUILD = "convox.build"
BUILD_SERVICE = "build"
MAINTAIN_EVERY = 30.0
FLUSH_GAP = 0.02
"""Seconds between two writes of the history: lines go to followers once written, a few hundredths late."""
MAX_WAIT = 5.0
"""Seconds a line is held at most for the ordering (past a re-attached container's catch-up)."""
EVENT_WRITE_SLACK = 0.1
"""Seconds between an event's timestamp and its row being committed, at most (what the events' reader allows)."""
CATCH_UP_LIMIT = 10.0
"""Seconds an app's lines wait at most for a re-attached container to read up to its end."""
BUILD_CATCH_UP = 600.0
"""A build that ended this long before the collector first saw it is not copied into the app's log."""


@dataclass(frozen=True)
class Limits:
    """How the collector keeps history and serves followers (set by the logs service's settings)."""

    max_bytes: int = 64 * MIB
    max_age: float = 7 * 86400.0
    order_window: float = 0.25
    follower_queue: int = 20_000
    max_line: int = MIB
    poll_interval: float = 0.1
    flush_interval: float = 0.2
    recent_bytes: int = 16 * MIB

    @property
    def segment_bytes(self) -> int:
        return max(64 * 1024, self.max_bytes // 8)


# ---- lines and cursors -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Line:
    ts: str
    service: str
    release: str
    pid: str
    text: str
    src: str = ""
    cur: str = ""
    seq: int = 0

    def encode(self) -> bytes:
        return (
            f"{self.seq}\t{self.ts}\t{self.service}\t{self.release}\t{self.pid}\t{self.src}\t{self.cur}\t{self.text}\n"
        ).encode("utf-8", "backslashreplace")

    def render(self) -> bytes:
        """``2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63 text\n`` (see ``LogsAPI``)."""
        return f"{self.ts[:26]}Z {line_source(self)} {self.text}\n".encode("utf-8", "backslashreplace")


def decode_line(raw: bytes) -> Line | None:
    try:
        seq, ts, service, release, pid, src, cur, text = raw.decode("utf-8", "backslashreplace").split("\t", 7)
        return Line(ts, service, release, pid, text, src, cur, int(seq))
    except ValueError:
        return None


def text_of(data: bytes) -> str:
    """A line's bytes as text: UTF-8, anything else escaped (``\\xff``), never dropped."""
    return data.decode("utf-8", "backslashreplace")


@dataclass(slots=True)
class Offset:
    """Where a source is: its cursor and, for containers, how many lines had that timestamp."""

    cursor: str
    count: int = 1


def after(src: str, a: str, b: str) -> bool:
    """Whether cursor ``a`` of ``src`` is past ``b`` (timestamps for containers, numbers otherwise)."""
    if src.startswith("c:"):
        return a > b
    try:
        return int(a) > int(b)
    except ValueError:
        return a > b


def advance(offsets: dict[str, Offset], src: str, cur: str) -> None:
    known = offsets.get(src)
    if known is None or after(src, cur, known.cursor):
        offsets[src] = Offset(cur, 1)
    elif cur == known.cursor:
        known.count += 1


def advance_all(offsets: dict[str, Offset], lines: list[Line]) -> None:
    """:func:`advance` for every line, a container's run of lines at once."""
    runs: dict[str, list[str]] = {}
    for line in lines:
        if line.src:
            runs.setdefault(line.src, []).append(line.cur)
    for src, curs in runs.items():
        if not src.startswith("c:"):
            for cur in curs:
                advance(offsets, src, cur)
            continue
        top = max(curs)
        known = offsets.get(src)
        if known is None or top > known.cursor:
            offsets[src] = Offset(top, curs.count(top))
        elif top == known.cursor:
            known.count += curs.count(top)


# ---- Docker's log messages -> lines ----------------------------------------------------------------------


class Splitter:
    """One container's log messages -> its complete lines ``(timestamp, bytes)``.

    Without a TTY every message is ``TIMESTAMP text``; a line Docker split comes as messages of exactly 16 KiB
    sharing the first one's timestamp, so a message of 16 KiB without a newline is held and joined with what
    follows (a message with another timestamp means the held one was whole). Lines are cut at ``max_line``.
    With a TTY the Engine frames nothing: lines are split at newlines and the repeated timestamps of a split
    line are taken out again.
    """

    def __init__(self, tty: bool, max_line: int) -> None:
        self.tty = tty
        self.max_line = max_line
        self.held: dict[int, tuple[str, bytearray]] = {}
        self.raw = bytearray()

    def feed(self, stream: int, payload: bytes, out: list[tuple[str, bytes]]) -> None:
        if self.tty:
            self._feed_tty(payload, out)
            return
        space = payload.find(b" ")
        if space < 0:
            return
        ts = payload[:space].decode("ascii", "replace")
        content = payload[space + 1 :]
        held = self.held.get(stream)
        if held is not None and held[0] != ts:
            out.append((held[0], bytes(held[1])))
            del self.held[stream]
            held = None
        if content.endswith(b"\n"):
            if held is None:
                out.append((ts, content[:-1]))
            else:
                held[1].extend(content[:-1])
                out.append((ts, bytes(held[1])))
                del self.held[stream]
        elif len(content) >= PARTIAL:
            if held is None:
                held = self.held[stream] = (ts, bytearray(content))
            else:
                held[1].extend(content)
            buffer = held[1]
            while len(buffer) > self.max_line:
                out.append((ts, bytes(buffer[: self.max_line])))
                del buffer[: self.max_line]
        elif held is None:
            out.append((ts, content))
        else:
            held[1].extend(content)
            out.append((ts, bytes(held[1])))
            del self.held[stream]

    def _feed_tty(self, chunk: bytes, out: list[tuple[str, bytes]]) -> None:
        self.raw.extend(chunk)
        start = 0
        while (newline := self.raw.find(b"\n", start)) >= 0:
            self._tty_line(bytes(self.raw[start:newline]), out)
            start = newline + 1
        del self.raw[:start]
        if len(self.raw) > self.max_line + TS_WIDTH + 1:
            self._tty_line(bytes(self.raw[: self.max_line + TS_WIDTH + 1]), out)
            del self.raw[: self.max_line + TS_WIDTH + 1]

    @staticmethod
    def _tty_line(data: bytes, out: list[tuple[str, bytes]]) -> None:
        stamp = data[:TS_WIDTH]
        if len(data) > TS_WIDTH and data[TS_WIDTH] == 0x20 and stamp[10:11] == b"T":
            ts = stamp.decode("ascii")
            content = data[TS_WIDTH + 1 :]
            marker = stamp + b" "
            pos = PARTIAL
            while len(content) > pos and content.startswith(marker, pos):
                content = content[:pos] + content[pos + len(marker) :]
                pos += PARTIAL
        else:
            ts, content = now_ts(), data
        if content.endswith(b"\r"):
            content = content[:-1]
        out.append((ts, content))

    def finish(self, out: list[tuple[str, bytes]]) -> None:
        """The log ended: what is held is whole."""
        for ts, data in self.held.values():
            out.append((ts, bytes(data)))
        self.held.clear()
        if self.raw:
            self._tty_line(bytes(self.raw), out)
            self.raw.clear()


# ---- history on disk -------------------------------------------------------------------------------------


def _read_chunk(path: Path, offset: int, size: int) -> tuple[list[Line], int, bool]:
    """Whole lines from ``offset``: the lines, the offset after them, and whether the file ended."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
        while data and b"\n" not in data:
            more = handle.read(size)
            if not more:
                break
            data += more
        eof = not handle.read(1)
    cut = data.rfind(b"\n")
    if cut < 0:
        return [], offset, True
    lines = [line for raw in data[:cut].split(b"\n") if (line := decode_line(raw)) is not None]
    return lines, offset + cut + 1, eof and cut == len(data) - 1


class History:
    """One app's history: segment files named by their first sequence number, appended by the collector's
    flusher only (in a thread), read by any number of followers (in threads)."""

    def __init__(self, directory: Path, limits: Limits) -> None:
        self.dir = directory
        self.limits = limits
        self.segments: list[int] = []
        self.sizes: dict[int, int] = {}
        self.first_ts: dict[int, str] = {}
        self.last_ts = ""
        """The time of the newest line (found by :meth:`open`): released lines never go back before it."""
        self._handle: IO[bytes] | None = None

    def path(self, first: int) -> Path:
        return self.dir / f"{first:016d}.log"

    def open(self) -> tuple[int, dict[str, Offset]]:
        """Load the segments; returns the last sequence number and the sources' cursors in the newest
        segment (the flusher's last batch may be there without its cursors saved)."""
        if not self.dir.is_dir():
            return 0, {}
        found = sorted(int(p.stem) for p in self.dir.glob("*.log") if p.stem.isdigit())
        self.segments = found
        self.sizes = {first: self.path(first).stat().st_size for first in found}
        offsets: dict[str, Offset] = {}
        for first in reversed(found):
            path = self.path(first)
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):  # a batch cut off mid-line by a kill: drop the torn line
                with path.open("r+b") as handle:
                    handle.truncate(cut)
                self.sizes[first] = cut
            lines = [line for raw in data[:cut].split(b"\n") if raw and (line := decode_line(raw)) is not None]
            if not lines:
                if cut == 0 and first == self.segments[-1]:
                    self._drop(first)
                continue
            for line in lines:
                if line.src:
                    advance(offsets, line.src, line.cur)
            self.last_ts = max(line.ts for line in lines)
            return max(line.seq for line in lines), offsets
        return 0, offsets

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def append(self, lines: list[Line]) -> None:
        data = b"".join(line.encode() for line in lines)
        if not self.segments or self.sizes.get(self.segments[-1], 0) >= self.limits.segment_bytes:
            self._close()
            first = lines[0].seq
            self.dir.mkdir(parents=True, exist_ok=True)
            self.segments.append(first)
            self.sizes[first] = 0
        current = self.segments[-1]
        if self._handle is None:
            self._handle = self.path(current).open("ab")
        self._handle.write(data)
        self._handle.flush()
        self.sizes[current] += len(data)
        while len(self.segments) > 1 and self.total > self.limits.max_bytes:
            self._drop(self.segments[0])

    def prune(self, now: float) -> None:
        """Drop segments whose newest line is older than ``max_age``."""
        for first in list(self.segments):
            try:
                modified = self.path(first).stat().st_mtime
            except FileNotFoundError:
                modified = 0.0
            if modified >= now - self.limits.max_age:
                break
            self._drop(first)

    def _drop(self, first: int) -> None:
        if self.segments and first == self.segments[-1]:
            self._close()
        self.segments.remove(first)
        self.sizes.pop(first, None)
        self.first_ts.pop(first, None)
        with contextlib.suppress(FileNotFoundError):
            self.path(first).unlink()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        self._close()

    def remove(self) -> None:
        self._close()
        self.segments.clear()
        self.sizes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, segments: list[int], cursor: int, since: str) -> int:
        """The index of the segment where lines after ``cursor`` with a time from ``since`` begin."""
        index = max(0, bisect_right(segments, cursor + 1) - 1)
        if since:
            for i in range(len(segments) - 1, index, -1):
                if self._first_ts(segments[i]) <= since:
                    return i
        return index

    def _first_ts(self, first: int) -> str:
        known = self.first_ts.get(first)
        if known is None:
            try:
                with self.path(first).open("rb") as handle:
                    line = decode_line(handle.readline().rstrip(b"\n"))
            except FileNotFoundError:
                line = None
            known = line.ts if line else ""
            self.first_ts[first] = known
        return known


class Subscriber:
    """A follower's queue of released lines: bounded; overflowing marks it to catch up instead."""

    __slots__ = ("limit", "lines", "overflow", "ready")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[Line] = []
        self.overflow = False
        self.ready = asyncio.Event()

    def push(self, batch: list[Line]) -> None:
        if self.overflow:
            return
        if len(self.lines) + len(batch) > self.limit:
            self.overflow = True
            self.lines = []
        else:
            self.lines.extend(batch)
        self.ready.set()

    def take(self) -> list[Line]:
        lines, self.lines = self.lines, []
        self.ready.clear()
        return lines


Match = Callable[[Line], bool]


def matcher(service: str = "", pid: str = "", text: str = "") -> Match | None:
    """Lines of a process type (and the platform's events about it), of one process, containing a text;
    ``None`` when every line is wanted."""
    if not (service or pid or text):
        return None

    def match(line: Line) -> bool:
        return wanted(line, service, pid, text)

    return match


class Mark:
    """A container being read: the latest timestamp it delivered, when it last delivered, and whether it is
    catching up (re-attached after a restart: until it has read to its end, the app's lines wait for it).

    A *pending* mark stands for an event of the container that Docker has not delivered yet: its start
    (created, not started yet: its first lines may come before the start event) or its exit (its log is read
    to the end, the ``die`` event is still on its way). Lines later than it wait for it (up to the hold) until
    the event comes, so that Docker's event stream lagging behind the logs does not reorder them."""

    __slots__ = ("catching_up", "pending", "seen", "ts")

    def __init__(self, ts: str, seen: float, catching_up: bool = False, pending: bool = False) -> None:
        self.ts = ts
        self.seen = seen
        self.catching_up = catching_up
        self.pending = pending


class AppLog:
    """One app's log in the collector: the ordering heap, the released lines in memory, the followers."""

    def __init__(self, name: str, history: History, limits: Limits, seq: int) -> None:
        self.name = name
        self.history = history
        self.limits = limits
        self.seq = seq
        self.flushed = seq
        self.heap: list[tuple[str, int, float, Line]] = []
        self.incoming: list[tuple[str, int, float, Line]] = []
        """Lines added since the last release, not in the heap yet (most often all go out at once)."""
        self.newest = ""
        self.lifecycle = 0
        """How many process starts and exits are held (they also wait for the events table)."""
        self.sources: dict[str, Mark] = {}
        """Containers being read (the ordering waits for those that are delivering)."""
        self.recent: deque[Line] = deque()
        self.recent_bytes = 0
        self.unflushed: list[Line] = []
        self.subscribers: set[Subscriber] = set()
        self.lag = 0.0
        """How late lines arrive after their timestamp (a moving average, seconds)."""
        self.latest = history.last_ts
        """The time of the newest line released: no line goes out with an earlier one."""
        self._counter = itertools.count()

    def add(self, line: Line, arrival: float) -> None:
        self.incoming.append((line.ts, next(self._counter), arrival, line))
        if line.ts > self.newest:
            self.newest = line.ts
        if line.src.startswith("d:"):
            self.lifecycle += 1

    @property
    def held(self) -> bool:
        return bool(self.heap or self.incoming)

    def forget_stale(self, now: float) -> None:
        """Stop waiting for containers' events that did not come within ``MAX_WAIT`` (pending marks)."""
        for src in [src for src, mark in self.sources.items() if mark.pending and now - mark.seen > MAX_WAIT]:
            del self.sources[src]

    def release_due(self, now: float, events_read_to: str = "~") -> float | None:
        """Release what is due; returns when to look again, while lines are held. A process's start or exit
        also waits until the events table is read up to its time (the platform events that caused it, such
        as a failed health check, are written there by another process and come out first)."""
        heap = self.heap
        window = min(MAX_WAIT, self.limits.order_window + 3 * self.lag)
        mark: str | None = None
        quiet_at: float | None = None
        blocked = False
        self.forget_stale(now)
        for source in self.sources.values():
            limit = CATCH_UP_LIMIT if source.catching_up else MAX_WAIT if source.pending else window
            if now - source.seen <= limit:
                if mark is None or source.ts < mark:
                    mark = source.ts
                if quiet_at is None or source.seen + limit < quiet_at:
                    quiet_at = source.seen + limit
                blocked = blocked or source.catching_up
        hold = min(MAX_WAIT, window * 4)
        out: list[Line] = []
        if (mark is None or self.newest <= mark) and (self.newest <= events_read_to or not self.lifecycle):
            everything = heap + self.incoming  # all due: one sort instead of a heap operation per line
            everything.sort()
            heap.clear()
            self.incoming.clear()
            if everything:
                self.release([entry[3] for entry in everything])
            return None
        for entry in self.incoming:
            heapq.heappush(heap, entry)
        self.incoming.clear()
        while heap:
            ts, _, arrival, line = heap[0]
            overdue = not blocked and arrival + hold <= now
            if not (mark is None or ts <= mark or overdue):
                break
            if line.src.startswith("d:") and ts > events_read_to and arrival + MAX_WAIT > now:
                break
            out.append(heapq.heappop(heap)[3])
        if out:
            self.release(out)
        if not heap:
            return None
        due = heap[0][2] + hold
        return due if quiet_at is None else min(due, quiet_at)

    def release(self, lines: list[Line]) -> None:
        """Give lines (in time order) their sequence numbers and send them to the history and the followers.

        A line older than one released already (its source lagged past the ordering: Docker's event stream,
        an event row committed late, a reader held up on a loaded machine) goes out with the time of the
        newest line released instead of its own, the time it is emitted with: the stream stays in time order
        whatever the lag. Its cursor keeps the source's own time (re-attaching and de-duplication use that)."""
        latest = self.latest
        for line in lines:
            if line.ts < latest:
                line.ts = latest
            else:
                latest = line.ts
            self.seq += 1
            line.seq = self.seq
            self.recent_bytes += len(line.text) + 64
            if line.src.startswith("d:"):
                self.lifecycle -= 1
        self.latest = latest
        self.unflushed.extend(lines)
        self.recent.extend(lines)

    def flushed_to(self, seq: int) -> None:
        """Lines up to ``seq`` are in the history: they go to the followers now, never before. A line a
        follower was shown is one a restart of the collector keeps (it resumes where the history ends), so a
        follow resumed after a restart neither misses a line nor is shown one again (re-read, and maybe
        re-timed, by the next collector)."""
        if seq > self.flushed:
            start = len(self.recent) - (self.seq - self.flushed)  # memory holds every line not flushed yet
            fresh = list(itertools.islice(self.recent, max(0, start), start + seq - self.flushed))
            self.flushed = seq
            for subscriber in list(self.subscribers):
                subscriber.push(fresh)
        while self.recent and self.recent_bytes > self.limits.recent_bytes and self.recent[0].seq <= self.flushed:
            self.recent_bytes -= len(self.recent.popleft().text) + 64

    async def _disk(self, cursor: int, upto: int, since: str) -> AsyncIterator[list[Line]]:
        segments = list(self.history.segments)
        if not segments:
            return
        start = await asyncio.to_thread(self.history.start, segments, cursor, since)
        for first in segments[start:]:
            if first > upto:
                return
            offset = 0
            while True:
                try:
                    lines, offset, eof = await asyncio.to_thread(
                        _read_chunk, self.history.path(first), offset, READ_CHUNK
                    )
                except FileNotFoundError:  # pruned while being read
                    break
                out = [line for line in lines if cursor < line.seq <= upto and line.ts >= since]
                if out:
                    yield out
                if lines and lines[-1].seq >= upto:
                    return
                if eof:
                    break

    async def read(self, since: str, follow: bool, match: Match | None) -> AsyncIterator[list[Line]]:
        """The lines from ``since`` (history, then memory), then with ``follow`` every new one: only lines in
        the history already (see :meth:`flushed_to`)."""
        end = self.flushed
        cursor = 0
        while True:
            while True:  # from disk until memory holds what follows the cursor
                first_in_memory = self.recent[0].seq if self.recent else self.flushed + 1
                if cursor + 1 >= first_in_memory:
                    break
                upto = first_in_memory - 1 if follow else min(first_in_memory - 1, end)
                async for batch in self._disk(cursor, upto, since):
                    out = batch if match is None else [line for line in batch if match(line)]
                    if out:
                        yield out
                cursor = upto
                if not follow and cursor >= end:
                    return
            # from memory, and subscribed in the same step: nothing released in between is missed
            skip = cursor + 1 - self.recent[0].seq if self.recent else 0
            flushed = self.flushed  # what follows comes to the subscriber once it is in the history
            batch = [line for line in itertools.islice(self.recent, max(0, skip), None) if line.seq <= flushed]
            if not follow:
                batch = [line for line in batch if line.seq <= end]
            if batch:
                cursor = batch[-1].seq
            subscriber = Subscriber(self.limits.follower_queue) if follow else None
            if subscriber is not None:
                self.subscribers.add(subscriber)
            try:
                out = [line for line in batch if line.ts >= since and (match is None or match(line))]
                if out:
                    yield out
                if subscriber is None:
                    return
                while True:
                    await subscriber.ready.wait()
                    if subscriber.overflow:
                        break
                    lines = subscriber.take()
                    if lines:
                        cursor = lines[-1].seq
                        out = [line for line in lines if line.ts >= since] if since else lines
                        if match is not None:
                            out = [line for line in out if match(line)]
                        if out:
                            yield out
            finally:
                if subscriber is not None:
                    self.subscribers.discard(subscriber)
            log.log("follower.catch_up", app=self.name, seq=cursor)


# ---- the rack's own log ----------------------------------------------------------------------------------


def _rack_start(path: Path, since: str) -> int:
    """The offset of the first line of the rack's log at or after ``since`` (the file is in time order)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0
    with handle:
        size = os.fstat(handle.fileno()).st_size

        def line_start(position: int) -> int:
            if position == 0:
                return 0
            handle.seek(position - 1)
            handle.readline()
            return handle.tell()

        low, high = 0, size
        while low < high:
            middle = (low + high) // 2
            handle.seek(line_start(middle))
            raw = handle.readline()
            ts = normalize_ts(raw.split(b" ", 1)[0].decode("ascii", "replace")) if raw else None
            if not raw or (ts is not None and ts >= since):
                high = middle
            else:
                low = middle + 1
        return line_start(low)


def _rack_read(path: Path, offset: int, size: int) -> tuple[bytes, int, int]:
    """Bytes from ``offset``, the file's size and inode (0, 0 when it does not exist)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return b"", 0, 0
    with handle:
        stat = os.fstat(handle.fileno())
        handle.seek(offset)
        return handle.read(size), stat.st_size, stat.st_ino


def rack_line(raw: bytes) -> Line | None:
    """``ISO-TIME service: text`` (what the supervisor writes) as a line of the service."""
    stamp, _, rest = raw.partition(b" ")
    ts = normalize_ts(stamp.decode("ascii", "replace"))
    if ts is None:
        return None
    source, sep, text = text_of(rest).partition(": ")
    if not sep:
        source, text = "rack", source
    return Line(ts, source, "", "", text)


async def read_rack_log(path: Path, since: str, follow: bool, poll: float) -> AsyncIterator[list[Line]]:
    offset = await asyncio.to_thread(_rack_start, path, since) if since else 0
    inode = 0
    partial = b""
    while True:
        data, size, current = await asyncio.to_thread(_rack_read, path, offset, READ_CHUNK)
        if inode and (current != inode or size < offset):  # replaced or truncated: from its start
            offset, partial, inode = 0, b"", current
            continue
        inode = current or inode
        if data:
            offset += len(data)
            full = len(data) == READ_CHUNK
            data = partial + data
            cut = data.rfind(b"\n") + 1
            partial = data[cut:]
            lines = [line for raw in data[:cut].split(b"\n") if raw and (line := rack_line(raw))]
            out = [line for line in lines if line.ts >= since]
            if out:
                yield out
            if full:
                continue
        if not follow:
            return
        await asyncio.sleep(poll)


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
class Watch:
    """What the collector knows of a container between its events."""

    killed: bool = False
    oom: bool = False
    died: int = 0
    """The time (ns) of the last ``die`` event of the container that was handled."""


class LocalLogs:
    def __init__(self, state: State, docker: Docker, apps: LocalApps, rack: str, data_dir: Path) -> None:
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
        self.limits = Limits()
        self.running = False
        self.logs: dict[str, AppLog] = {}
        self.offsets: dict[str, Offset] = {}
        """Every source's cursor as far as lines were collected (what a re-attach starts from)."""
        self.saved: dict[str, Offset] = {}
        """Every source's cursor as far as lines are in the history (what is persisted)."""
        self.source_app: dict[str, str] = {}
        self.unsaved: set[str] = set()
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.again: set[str] = set()
        self.watch: dict[str, Watch] = {}
        self.dirty: set[AppLog] = set()
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

    async def collect(
        self,
        *,
        max_bytes: int = Limits.max_bytes,
        max_age: float = Limits.max_age,
        order_window: float = Limits.order_window,
        follower_queue: int = Limits.follower_queue,
        max_line: int = Limits.max_line,
        poll_interval: float = Limits.poll_interval,
    ) -> None:
        """Start collecting (the logs service does, once): resume every source where the history ends."""
        if self.running:
            return
        self.limits = Limits(
            max_bytes=max_bytes,
            max_age=max_age,
            order_window=order_window,
            follower_queue=follower_queue,
            max_line=max_line,
            poll_interval=poll_interval,
        )
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
        self.dirty.add(applog)
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
            dirty, self.dirty = self.dirty, set()
            for applog in dirty:
                try:
                    next_due = applog.release_due(now, self.events_read_to)
                except Exception as exc:  # never stop releasing every other app's lines
                    log.error("release", app=applog.name, error=type(exc).__name__)
                    next_due = now + 1.0
                if next_due is not None:
                    self.dirty.add(applog)
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
        last_maintenance = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.limits.flush_interval)
            self._released.clear()
            try:
                await self._flush()
                if time.monotonic() - last_maintenance > MAINTAIN_EVERY:
                    last_maintenance = time.monotonic()
                    await self._maintain()
            except Exception as exc:  # the disk or the database failed: keep collecting, try again
                log.error("history.flush", error=type(exc).__name__, message=str(exc))
                await asyncio.sleep(self.limits.flush_interval)
            await asyncio.sleep(FLUSH_GAP)  # what is released meanwhile goes in the next batch

    async def _flush(self) -> None:
        work = [(applog, applog.unflushed) for applog in self.logs.values() if applog.unflushed]
        for applog, _ in work:
            applog.unflushed = []
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
        watch = self.watch.setdefault(container, Watch())
        when = int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000)
        src = f"c:{container}"
        if action == "create":  # its lines are waited for (ordering) from now, before its start is seen
            applog = await self.applog(app)
            mark = Mark(ts_from_ns(when), asyncio.get_running_loop().time(), pending=True)
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
                self.dirty.add(owner)
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
            self.again.add(container)
            return
        applog = await self.applog(labels[LABEL_APP])
        src = f"c:{container}"
        known = self.offsets.get(src)
        cursor = known.cursor if known else ""
        created = applog.sources.get(src)  # marked at its create event: none of its lines is older
        if created is not None:
            cursor = max(cursor, created.ts)
        applog.sources[src] = Mark(cursor, asyncio.get_running_loop().time(), catching_up=True)
        self._ensure_reader(container, labels)

    def _ensure_reader(self, container: str, labels: dict[str, str]) -> None:
        if not self.running:
            return
        if container in self.readers:
            self.again.add(container)
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
            mark = Mark(max(cursor, mark.ts) if mark else cursor, asyncio.get_running_loop().time(), True)
            applog.sources[src] = mark
        backoff = 0.1
        finished = ""
        try:
            while True:
                self.again.discard(container)
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
                    self.dirty.add(applog)
                    self._wake.set()
                received = await self._follow(applog, container, src, service, release, pid, running, tty)
                if received is None:  # the connection dropped: the Engine is going or gone
                    mark.catching_up = True
                    mark.seen = asyncio.get_running_loop().time()
                    await asyncio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                backoff = 0.1
                if not running and container not in self.again:
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
                applog.sources[src] = Mark(finished, asyncio.get_running_loop().time(), pending=True)
            if self.readers.get(container) is asyncio.current_task():
                del self.readers[container]
            self._wake.set()
            if container in self.again and self.running:  # started again while this reader was ending
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
                self.dirty.update(applog for applog in self.logs.values() if applog.held)
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


__all__ = ["History", "Limits", "Line", "LocalLogs", "Splitter", "rack_line", "read_rack_log"]
