"""What every raw stream's service does (:mod:`shared.rawstream`): take the client's connection from the HTTP
server, run the blocking parts of a stream in threads of their own, and serve a stream that only has output
(a build's log, followed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from shared import rawstream
from shared.logfmt import Logger
from shared.splice import batch_reads, write_all

T = TypeVar("T")
SEND_BUFFER = 4 << 20
"""What the client's socket may hold of output it has not read yet (as :data:`shared.frames.SEND_BUFFER`)."""


def in_thread(work: Callable[[], T], name: str) -> asyncio.Future[T]:
    """``work`` run in a thread of its own (a stream's lifetime would hold one of the default executor's few
    threads), its outcome as a future of the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # reported to the loop, never lost in the thread
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def shut(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def taken(extension: Any) -> tuple[socket.socket, bytes]:
    """The client's connection out of the server's hands (:mod:`shared.rawhttp`), in blocking mode, the
    server's descriptor of it closed; and what the client sent after its request."""
    fd, leftover = extension["hand"]()
    extension["release"]()
    extension["status"] = 101
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    batch_reads(sock)
    with contextlib.suppress(OSError):  # room for the output the client has not read yet
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return sock, leftover


async def send_all(sock: socket.socket, *parts: bytes | memoryview) -> None:
    """Write ``parts`` to the client: on the loop while its socket takes them at once (the common case: a
    line of a followed log goes out in this turn), the rest in a thread."""
    try:
        sent = sock.sendmsg(parts, (), socket.MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent < sum(len(part) for part in parts):
        rest = memoryview(b"".join(parts))[sent:]
        await asyncio.to_thread(write_all, sock.fileno(), rest)


class Direct:
    """A followed stream's output written in the turn of whoever has it (the log store's collector, as it
    releases lines): no wake of the stream's own task between the line and the client, the hop that costs
    most on a quiet stream. :meth:`send` takes a batch only when nothing of the stream is being written (the
    stream's own sender is not in a write, no earlier batch is still going out), so the output keeps its
    order; what the client's socket does not take at once goes on in a thread, and the sender waits for it."""

    def __init__(self) -> None:
        self.client: socket.socket | None = None
        self.writing = True
        """The stream is being written otherwise (until :meth:`open`, while the sender writes)."""
        self.pending: asyncio.Future[None] | None = None

    def open(self, client: socket.socket) -> None:
        """The stream is accepted: batches may go straight to ``client``."""
        self.client = client
        self.writing = False

    def send(self, batch: list[bytes]) -> bool:
        """``batch`` written as one stdout frame, ``True``; or ``False``, left for the stream's own sender."""
        if self.writing or self.client is None:
            return False
        data = b"".join(batch)
        header = rawstream.frame_header(rawstream.STDOUT, len(data))
        try:
            sent = self.client.sendmsg((header, data), (), socket.MSG_DONTWAIT)
        except OSError:  # full (the sender waits for room), or gone (its write finds out)
            return False
        if sent < len(header) + len(data):
            self.writing = True
            self.pending = asyncio.ensure_future(self._finish(memoryview(header + data)[sent:]))
        return True

    __call__ = send  # a log stream's sink (:data:`shared.provider.contract.Sink`)

    async def _finish(self, rest: memoryview) -> None:
        assert self.client is not None
        try:
            await asyncio.to_thread(write_all, self.client.fileno(), rest)
        finally:
            self.writing = False

    async def hold(self) -> None:
        """Before the sender writes: what went out here is out, and nothing goes here until :meth:`release`."""
        self.writing = True
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending
            self.writing = True

    def release(self) -> None:
        self.writing = False

    async def close(self) -> None:
        """Once the client's socket is shut: the write going on in a thread has failed or ended (its
        descriptor is not closed under it)."""
        self.writing = True
        if self.pending is not None:
            await asyncio.gather(self.pending, return_exceptions=True)


async def serve_output(
    extension: Any,
    chunks: AsyncIterator[bytes],
    status: Callable[[], Awaitable[bytes]],
    log: Logger,
    direct: Direct | None = None,
) -> str:
    """A raw stream with output only: each of ``chunks`` a stdout frame, then the status frame ``status()``
    makes, until the client goes (the chunks are then left); with ``direct``, output may also come through
    it (:class:`Direct`), in order with the chunks. The outcome, for the log."""
    client, _ = taken(extension)
    outcome = "exit"
    gone = in_thread(lambda: rawstream.wait_hangup(client.fileno()), "raw-hangup")

    async def send() -> None:
        await send_all(client, rawstream.accepted())
        if direct is not None:
            direct.open(client)
        async for chunk in chunks:
            if direct is not None:
                await direct.hold()
            await send_all(client, rawstream.frame_header(rawstream.STDOUT, len(chunk)), chunk)
            if direct is not None:
                direct.release()
        if direct is not None:
            await direct.hold()
        await send_all(client, await status())

    sender = asyncio.ensure_future(send())
    try:
        await asyncio.wait({sender, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not sender.done():
            outcome = "disconnect"
        elif sender.exception() is not None:
            outcome = "disconnect" if isinstance(sender.exception(), OSError) else "error"
    finally:
        sender.cancel()
        shut(client)  # the hang-up's watch ends
        if direct is not None:
            await direct.close()
        await asyncio.gather(sender, gone, return_exceptions=True)
        client.close()
        log.log("stream.end", outcome=outcome, raw="true")
    return outcome
