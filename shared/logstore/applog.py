"""One app's log in the store: the ordering of its sources, its released lines in memory, its followers."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable

from shared.logfmt import Logger
from shared.logline import wanted
from shared.logstore.history import READ_CHUNK, History, Limits, read_chunk
from shared.logstore.lines import Line, text_bytes

log = Logger("logs")

MAX_WAIT = 5.0
"""Seconds a line is held at most for the ordering (past a re-attached source's catch-up)."""
CATCH_UP_LIMIT = 10.0
"""Seconds an app's lines wait at most for a re-attached source to read up to its end."""


class Subscriber:
    """A follower's queue of released lines: bounded; overflowing marks it to catch up instead.

    ``direct``: where the lines may go at once, in the collector's turn (a follower's own output, written
    without waiting): taken there when nothing is queued before them, queued when it declines."""

    __slots__ = ("direct", "limit", "lines", "overflow", "ready")

    def __init__(self, limit: int, direct: Callable[[list[Line]], bool] | None = None) -> None:
        self.limit = limit
        self.lines: list[Line] = []
        self.overflow = False
        self.ready = asyncio.Event()
        self.direct = direct

    def push(self, batch: list[Line]) -> None:
        if self.overflow:
            return
        if self.direct is not None and not self.lines:
            try:
                if self.direct(batch):
                    return
            except Exception:  # a follower's output never stops the collector: its own turn finds out
                self.direct = None
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


class SourceProgress:
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
        self.runs: list[tuple[list[Line], float]] = []
        """Runs of lines added since the last release, each in time order (a container's read): they go out
        as they are when nothing else is held, and join ``incoming`` a line at a time otherwise."""
        self.newest = ""
        self.lifecycle = 0
        """How many process starts and exits are held (they also wait for the events table)."""
        self.sources: dict[str, SourceProgress] = {}
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

    def add_run(self, lines: list[Line], arrival: float) -> None:
        """Lines of one source in strictly increasing time, none a process's start or exit (a container's
        read): kept as one run, not an entry per line, until something else is held with them."""
        self.runs.append((lines, arrival))
        if lines[-1].ts > self.newest:
            self.newest = lines[-1].ts

    def _chained(self) -> bool:
        """Whether there are runs and each begins after the one before it ends (a source read in several
        reads while its lines were held: a write of the history in a thread)."""
        runs = self.runs
        return bool(runs) and all(b[0][0].ts > a[0][-1].ts for a, b in itertools.pairwise(runs))

    @property
    def held(self) -> bool:
        return bool(self.heap or self.incoming or self.runs)

    def entries(self) -> list[tuple[str, int, float, Line]]:
        """Every line added and not released yet as an ordering entry (the runs taken apart)."""
        counter = self._counter
        for lines, arrival in self.runs:
            self.incoming.extend([(line.ts, next(counter), arrival, line) for line in lines])
        self.runs.clear()
        return self.incoming

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
            if not heap and not self.incoming and self._chained():  # runs one after the other: as they are
                for lines, _ in self.runs:
                    self.release(lines, ordered=True)
                self.runs.clear()
                return None
            everything = heap + self.entries()  # all due: one sort instead of a heap operation per line
            everything.sort()
            heap.clear()
            self.incoming.clear()
            if everything:
                self.release([entry[3] for entry in everything])
            return None
        for entry in self.entries():
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

    def release(self, lines: list[Line], ordered: bool = False) -> None:
        """Give lines (in time order) their sequence numbers and send them to the history and the followers.

        A line older than one released already (its source lagged past the ordering: Docker's event stream,
        an event row committed late, a reader held up on a loaded machine) goes out with the time of the
        newest line released instead of its own, the time it is emitted with: the stream stays in time order
        whatever the lag. Its cursor keeps the source's own time (re-attaching and de-duplication use that).

        ``ordered``: the lines are a run (:meth:`add_run`): in time order already, none a start or exit."""
        latest = self.latest
        if ordered and lines[0].ts >= latest:  # the common case: only their sequence numbers to give
            seq = self.seq
            for line in lines:
                seq += 1
                line.seq = seq
            self.seq = seq
            self.latest = lines[-1].ts
            self.recent_bytes += text_bytes(lines) + 64 * len(lines)
            self.unflushed.extend(lines)
            self.recent.extend(lines)
            return
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

    def flushed_to(self, seq: int, lines: list[Line] | None = None) -> None:
        """Lines up to ``seq`` are in the history: they go to the followers now, never before. A line a
        follower was shown is one a restart of the collector keeps (it resumes where the history ends), so a
        follow resumed after a restart neither misses a line nor is shown one again (re-read, and maybe
        re-timed, by the next collector). ``lines``: the lines written, when the caller has them (the
        followers get them as they are, instead of taken from memory again)."""
        if lines and lines[0].seq == self.flushed + 1 and lines[-1].seq == seq:
            self.flushed = seq
            for subscriber in list(self.subscribers):
                subscriber.push(lines)
        elif seq > self.flushed:
            # memory holds every line not flushed yet, at its end: taken from the right (a deque is walked
            # from an end, and memory may hold a few hundred thousand lines flushed already)
            fresh = list(itertools.islice(reversed(self.recent), self.seq - self.flushed))
            fresh.reverse()
            del fresh[seq - self.flushed :]
            self.flushed = seq
            for subscriber in list(self.subscribers):
                subscriber.push(fresh)
        recent, flushed = self.recent, self.flushed  # once per released line in a burst: locals
        excess = self.recent_bytes - self.limits.recent_bytes
        if excess > 0:
            popleft = recent.popleft
            while excess > 0 and recent and recent[0].seq <= flushed:
                excess -= len(popleft().text) + 64
            self.recent_bytes = self.limits.recent_bytes + excess

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
                        read_chunk, self.history.path(first), offset, READ_CHUNK
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

    async def read(
        self, since: str, follow: bool, match: Match | None, direct: Callable[[list[Line]], bool] | None = None
    ) -> AsyncIterator[list[Line]]:
        """The lines from ``since`` (history, then memory), then with ``follow`` every new one: only lines in
        the history already (see :meth:`flushed_to`). ``direct``: where new lines may go in the collector's
        turn instead (:class:`Subscriber`), once what came before them was yielded."""
        end = self.flushed
        cursor = 0

        def chosen(lines: list[Line]) -> list[Line]:
            out = [line for line in lines if line.ts >= since] if since else lines
            return out if match is None else [line for line in out if match(line)]

        deliver: Callable[[list[Line]], bool] | None = None
        if direct is not None:
            take = direct

            def deliver(lines: list[Line]) -> bool:
                nonlocal cursor
                out = chosen(lines)
                if out and not take(out):
                    return False
                cursor = lines[-1].seq
                return True

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
            subscriber = Subscriber(self.limits.follower_queue, deliver) if follow else None
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
                        if out := chosen(lines):
                            yield out
            finally:
                if subscriber is not None:
                    self.subscribers.discard(subscriber)
            log.log("follower.catch_up", app=self.name, seq=cursor)
