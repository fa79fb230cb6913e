"""The rack's own log: ``ISO-TIME service: text`` lines in one file, read from a time and followed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from shared.logstore.history import READ_CHUNK
from shared.logstore.lines import Line, text_of
from shared.logstore.timestamps import normalize_ts


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
