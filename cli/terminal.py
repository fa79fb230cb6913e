"""The local terminal during a stream: its size, raw mode (always restored), and stdin read without blocking.

Raw mode is entered only once the rack accepted the stream, and left on every path out (the end of the
stream, an error, Ctrl-C, a dead rack): ``with raw(fd):`` restores the saved attributes in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import stat
import termios
import tty
from collections.abc import Iterator


def is_terminal(fd: int) -> bool:
    return os.isatty(fd)


def size(fd: int) -> tuple[int, int] | None:
    """``(columns, lines)`` of the terminal on ``fd`` (or on stdout, stderr when ``fd`` has none)."""
    for candidate in (fd, 1, 2):
        with contextlib.suppress(OSError):
            columns, lines = os.get_terminal_size(candidate)
            if columns > 0 and lines > 0:
                return columns, lines
    return None


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (keys go to the remote process as typed, Ctrl-C included)."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Input:
    """stdin as an async reader: ``await read_into(view)`` reads what there is into ``view`` (0 at EOF); it
    never blocks the loop.

    Pipes and terminals are watched with ``loop.add_reader``; what the loop cannot watch (a regular file,
    ``/dev/null``) is read in a thread.
    """

    CHUNK = 1 << 20
    F_SETPIPE_SZ = 1031
    """Linux: a pipe's capacity (64 KiB by default); a larger one lets each read take more."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.readable = asyncio.Event()
        self.watched = False
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, self.F_SETPIPE_SZ, self.CHUNK)
        if not stat.S_ISREG(mode):
            try:
                self.loop.add_reader(fd, self.readable.set)
                self.watched = True
            except (PermissionError, ValueError, OSError):
                self.watched = False

    async def read_into(self, view: memoryview) -> int:
        """Read what there is (at most ``len(view)`` bytes) into ``view``; 0 at EOF."""
        if not self.watched:
            return await asyncio.to_thread(self._read, view)
        while True:
            await self.readable.wait()
            self.readable.clear()
            # the loop's callback may have fired once more after the last read took what there was:
            # read only what is there now, so that os.read never blocks the loop
            if not select.select([self.fd], [], [], 0)[0]:
                continue
            try:
                return self._read(view)
            except BlockingIOError:
                continue

    def _read(self, view: memoryview) -> int:
        try:
            return os.readv(self.fd, [view])
        except BlockingIOError:
            raise
        except OSError:  # EIO: the terminal went away
            return 0

    def close(self) -> None:
        if self.watched:
            self.loop.remove_reader(self.fd)
            self.watched = False


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything (a terminal or pipe in non-blocking mode may take it in parts)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]
