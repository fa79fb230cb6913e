"""Bytes from one descriptor to another inside the kernel (``splice(2)``), for a thread to run.

``splice`` moves data between a pipe and anything else without bringing it into this process: from a
socket into a pipe, from the pipe to a socket or a file, the pages are passed along, not copied through
Python's buffers. A pipe of this module's stands between the two descriptors unless both are pipes (see
:attr:`Pump.direct`). A descriptor the kernel cannot splice (a terminal, ``/dev/null`` read) is read and
written the usual way instead, through one buffer used again and again.

Every call here blocks (descriptors in blocking mode); ``os.splice`` lets go of the GIL while it waits, so a
thread per direction moves a stream at the kernel's pace while the event loop goes on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import stat
import struct

CHUNK = 1 << 20
"""The most moved by one call; the pipe between two descriptors holds as much."""
BATCH = 128 << 10
BATCH_WAIT = 0.002
"""A socket's reads (and splices from it) wait this long for BATCH bytes to be there (:func:`batch_reads`).
Less than a peer's default send buffer (``net.core.wmem_default``, 208 KiB: the most a unix socket's sender
has in flight), or every read would wait it out."""
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Broken(OSError):
    """A side of a :class:`Pump` failed: ``reading`` tells which (the source, or else the destination)."""

    def __init__(self, error: OSError, reading: bool) -> None:
        super().__init__(error.errno, error.strerror)
        self.reading = reading


def is_pipe(fd: int) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    return False


def batch_reads(sock: socket.socket, size: int = BATCH, wait: float = BATCH_WAIT) -> None:
    """Make each read of ``sock`` wait up to ``wait`` seconds for ``size`` bytes (``SO_RCVLOWAT`` with
    ``SO_RCVTIMEO``): a bulk stream is then moved in few large reads, not one per frame the sender wrote (a
    reader faster than its writer would wake for each), and a small one is late by ``wait`` at most. A read
    that finds nothing at all by then fails with ``EAGAIN``; the reads here wait for the socket and go on."""
    seconds, micros = int(wait), int((wait % 1) * 1_000_000)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))


def recv_into(sock: socket.socket, view: memoryview) -> int:
    """One read of ``sock`` into ``view``; a read of a batched socket (:func:`batch_reads`) that found nothing
    in its wait fails with ``EAGAIN``, and the socket is waited for again."""
    while True:
        try:
            return sock.recv_into(view)
        except BlockingIOError:
            select.select([sock], [], [])


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything, waiting when ``fd`` is non-blocking after all and full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def _splice(src: int, dst: int, count: int) -> int:
    """``os.splice``, waiting when a side is non-blocking after all and not ready."""
    while True:
        try:
            return os.splice(src, dst, count)
        except BlockingIOError:  # nothing to read (a batched socket's wait ran out), or no room to write
            select.select([src], [], [])
            select.select([], [dst], [])


class Pump:
    """Moves bytes from ``src`` to ``dst`` (both blocking, neither owned: the caller closes them)."""

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.direct = is_pipe(src) and is_pipe(dst)
        """Only pipe to pipe is spliced directly: the kernel waits for either side with neither pipe locked.
        A splice from a pipe to a socket keeps the pipe locked while it waits for room in the socket (and one
        from a socket into a pipe while it waits for data): whoever else writes (or reads) that pipe, such as
        the program that feeds `convox exec`'s stdin and reads its stdout, would wait uninterruptibly for the
        stream, and the stream for it. So a pipe that is not this module's own is only ever spliced to or from
        a pipe that is."""
        self.pipe: tuple[int, int] | None = None
        self.buffer: memoryview | None = None
        """Set once splicing was refused: the bytes then go through it."""

    def move(self, most: int = CHUNK) -> int:
        """Up to ``most`` bytes from ``src``, all of them written to ``dst`` before it returns; 0 at the
        source's end. :class:`Broken` when either side fails (the one that did is in it)."""
        if self.buffer is None:
            try:
                return self._splice(most)
            except _Refused:
                self.buffer = memoryview(bytearray(CHUNK))
        return self._copy(most)

    def _splice(self, most: int) -> int:
        if self.direct:
            try:
                return _splice(self.src, self.dst, most)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise _Refused() from None
                raise Broken(exc, reading=_is_reading(exc)) from None
        if self.pipe is None:
            self.pipe = _pipe()
        read, write = self.pipe
        try:
            moved = _splice(self.src, write, most)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # nothing has moved yet: the source cannot be spliced
                raise _Refused() from None
            raise Broken(exc, reading=True) from None
        left = moved
        while left:
            try:
                left -= _splice(read, self.dst, left)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise Broken(exc, reading=False) from None
                self._drain(read, left)  # the destination cannot be spliced: what the pipe holds is written
                self.buffer = memoryview(bytearray(CHUNK))
                left = 0
        return moved

    def _drain(self, read: int, left: int) -> None:
        while left:
            data = os.read(read, left)
            left -= len(data)
            try:
                write_all(self.dst, data)
            except OSError as exc:
                raise Broken(exc, reading=False) from None

    def _copy(self, most: int) -> int:
        assert self.buffer is not None
        view = self.buffer[: min(most, len(self.buffer))]
        while True:
            try:
                got = os.readv(self.src, [view])
                break
            except BlockingIOError:
                select.select([self.src], [], [])
            except OSError as exc:
                raise Broken(exc, reading=True) from None
        try:
            write_all(self.dst, view[:got])
        except OSError as exc:
            raise Broken(exc, reading=False) from None
        return got

    def close(self) -> None:
        if self.pipe is not None:
            for fd in self.pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.pipe = None


class _Refused(Exception):
    """The kernel cannot splice one of the descriptors (nothing has moved)."""


def _is_reading(exc: OSError) -> bool:
    """For a direct splice, which side failed: a reset or hang-up of a peer that sends is the reading side."""
    return exc.errno not in (errno.EPIPE, errno.ENOSPC)


def _pipe() -> tuple[int, int]:
    read, write = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # past /proc/sys/fs/pipe-max-size: the default 64 KiB
        fcntl.fcntl(write, F_SETPIPE_SZ, CHUNK)
    return read, write
