"""One app's history on disk: segment files named by their first sequence number, bounded by bytes and age."""

from __future__ import annotations

import contextlib
import shutil
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.logstore.lines import Line, Offset, advance, decode_line, encode_all

MIB = 1024 * 1024
READ_CHUNK = 4 * MIB


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


def read_chunk(path: Path, offset: int, size: int) -> tuple[list[Line], int, bool]:
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
        data = encode_all(lines)
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
