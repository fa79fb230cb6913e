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


async def serve_output(
    extension: Any, chunks: AsyncIterator[bytes], status: Callable[[], Awaitable[bytes]], log: Logger
) -> str:
    """A raw stream with output only: each of ``chunks`` a stdout frame, then the status frame ``status()``
    makes, until the client goes (the chunks are then left). The outcome, for the log."""
    client, _ = taken(extension)
    outcome = "exit"
    gone = in_thread(lambda: rawstream.wait_hangup(client.fileno()), "raw-hangup")

    async def send() -> None:
        await send_all(client, rawstream.accepted())
        async for chunk in chunks:
            await send_all(client, rawstream.frame_header(rawstream.STDOUT, len(chunk)), chunk)
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
        await asyncio.gather(sender, gone, return_exceptions=True)
        client.close()
        log.log("stream.end", outcome=outcome, raw="true")
    return outcome
