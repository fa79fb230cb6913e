"""A raw connection to the Docker Engine: one request written by hand, its answer's head read, then the body
received straight into one buffer (no copy per read). What the engine's streams ride on: a process's stdio
(a hijacked connection, :mod:`shared.provider.engine.exec`) and a container's log, followed
(:meth:`shared.provider.local.docker.Docker.logs`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable
from shared.frames import widen_send_buffer

if TYPE_CHECKING:
    from shared.provider.engine.docker import Engine

BUFFER = 1 << 20
"""What one connection buffers of the engine's answer (Docker's frames, 32 KiB at most, are coalesced)."""

R = TypeVar("R", bound="Receiver")


def engine_error(status: int, message: str, what: str) -> RackError:
    """The engine's refusal (``status``, its ``message``) of something about ``what``, as the rack's error."""
    if status == 404:
        return NotFound(f"{what}: not found")
    if status == 409:
        return Conflict(f"{what}: {message}")
    if status == 400:
        return BadRequest(f"{what}: {message}")
    return RackError(f"{what}: {message or f'docker error {status}'}", status=502)


class Receiver(asyncio.BufferedProtocol):
    """The engine's side of a raw connection, received into one buffer: data is looked at in place
    (``buf[start:end]``; ``buf[0]`` is unused) and given back with :meth:`consumed`."""

    def __init__(self, size: int = BUFFER) -> None:
        self.buf = bytearray(size + 1)
        self.start = 1
        self.end = 1
        self.eof = False
        self.error: Exception | None = None
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        widen_send_buffer(transport)  # stdin piped in is written to the engine whole, not partly buffered here

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        if self.end >= len(self.buf) and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def interrupt(self) -> None:
        """End a wait of :meth:`more` without data (the reader has something else to look at)."""
        self._wake()

    async def more(self) -> bool:
        """Wait for data past ``end`` (or :meth:`interrupt`); False at EOF."""
        if self.eof:
            return False
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        return True

    def consumed(self, upto: int) -> None:
        """Everything before ``upto`` is used: keep the rest at the front, read on."""
        rest = self.end - upto
        if rest:
            self.buf[1 : 1 + rest] = self.buf[upto : self.end]
        self.start, self.end = 1, 1 + rest
        if self.end >= len(self.buf):  # one frame larger than the buffer: make room (in a new buffer: the
            self.buf = self.buf + bytes(len(self.buf))  # last chunk handed out may still be looked at)
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    async def answer(self, within: float, what: str) -> None:
        """Read the answer's head (within ``within`` seconds): past it when the engine said yes (200, 101),
        else the engine's refusal raised, translated."""
        async with asyncio.timeout(within):
            while (mark := self.buf.find(b"\r\n\r\n", 1, self.end)) < 0:
                if not await self.more():
                    raise ConnectionResetError("closed before the response")
            lines = self.buf[1:mark].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            if status not in (101, 200):
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length") or 0)
                while self.end - (mark + 4) < length and await self.more():
                    pass
                text = self.buf[mark + 4 : mark + 4 + length].decode(errors="replace")
                try:
                    message = str(json.loads(text).get("message", ""))
                except (ValueError, AttributeError):
                    message = text.strip()
                raise engine_error(status, message, what)
        self.consumed(mark + 4)


async def request(engine: Engine, head: bytes, what: str, factory: Callable[[], R]) -> tuple[asyncio.Transport, R]:
    """A new connection to ``engine``, the request ``head`` (and body) written on it, the answer's head read
    (see :meth:`Receiver.answer`): the connection and its receiver, the body next in its buffer. A broken
    connection is :class:`Unavailable`; the connection is closed on any failure."""
    transport, receiver = await engine.connect(factory)
    try:
        transport.write(head)
        await receiver.answer(engine.timeout, what)
    except (OSError, ValueError, IndexError) as exc:
        transport.close()
        raise Unavailable(f"{what}: the docker engine broke the stream ({type(exc).__name__})") from None
    except BaseException:
        transport.close()
        raise
    return transport, cast("R", receiver)
