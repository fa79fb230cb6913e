"""Client connections handed from the gateway to a service, file descriptor and all (``SCM_RIGHTS``).

A stream that reaches the gateway over a plain socket (the rack's own unix socket, ``DATA_DIR/rack.sock``, or
plain HTTP) is not relayed: once its upgrade request is authenticated and routed, the gateway sends the
client's socket itself to the service, with the request as the service is to read it (its path and handshake
headers, the internal secret instead of the rack's credentials) and whatever of the stream the gateway had
already read. From then on the client and the service talk over that socket, and the gateway holds nothing of
it: no byte of the stream crosses the gateway. (A TLS session cannot be handed to another process from Python:
streams over HTTPS are pumped, :mod:`services.gateway.handoff`.)

The hand-off is one message over a connection to the service's hand-off socket (``NAME.hand`` beside its
``NAME.sock``, mode 0600 in the rack's 0700 run dir): a 4-byte big-endian length, then the request, the
descriptor riding on the message's first bytes; the service answers one byte, ``1``, once it serves the
connection, then the status it answered the request with (three digits, once it has: 101 for a stream that
goes on, a refusal's 4xx), for the gateway's request log. The service's HTTP server reads the request from
there exactly as if the client had sent it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from shared.logfmt import Logger

log = Logger("handoff")
SUFFIX = ".hand"
"""A hand-off socket's suffix: as long as ``.sock``, for the length a unix socket's path may have."""
TAKEN = b"1"
HEAD_LIMIT = 64 << 10
"""The most a handed request (its head and the stream's first bytes) may be."""
RECEIVE_TIMEOUT = 5.0
ANSWER_TIMEOUT = 30.0
"""How long the status a handed request was answered with is waited for (a stream's route answers once it
has validated and started it: a process's exec, a log's first read)."""
FAMILIES = frozenset({socket.AF_UNIX, socket.AF_INET, socket.AF_INET6})


def handoff_path(service_socket: Path) -> Path:
    """Where the service that listens at ``service_socket`` takes handed connections."""
    return service_socket.with_suffix(SUFFIX)


async def connect(path: Path) -> socket.socket:
    """A connection to the hand-off socket at ``path`` (``OSError`` when nothing listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except BaseException:
        sock.close()
        raise
    return sock


async def hand(conn: socket.socket, fd: int, request: bytes) -> None:
    """Send ``fd`` and ``request`` over ``conn`` (from :func:`connect`) and wait until the service took it.

    Raises ``ConnectionError`` when the service answers anything but :data:`TAKEN` or goes away first."""
    if len(request) > HEAD_LIMIT:
        raise ConnectionError("the request is too large to hand over")
    loop = asyncio.get_running_loop()
    message = len(request).to_bytes(4, "big") + request
    fds = array.array("i", [fd])
    while True:
        try:
            sent = conn.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            break
        except BlockingIOError:  # a fresh connection's buffer is empty: only if the service is stuck
            await _ready(loop.add_writer, loop.remove_writer, conn)
    if sent < len(message):
        await loop.sock_sendall(conn, message[sent:])
    answer = await loop.sock_recv(conn, 1)
    if answer != TAKEN:
        raise ConnectionError("the service did not take the connection")


async def answered(conn: socket.socket, within: float = ANSWER_TIMEOUT) -> int | None:
    """The status the service answered the handed request with (after :func:`hand`); ``None`` when it did
    not say within ``within`` seconds (or went away first)."""
    loop = asyncio.get_running_loop()
    data = b""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(within):
            while len(data) < 3 and (more := await loop.sock_recv(conn, 3 - len(data))):
                data += more
    return int(data) if len(data) == 3 and data.isdigit() else None


async def _ready(add: Callable[..., None], remove: Callable[[int], object], sock: socket.socket) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    add(sock.fileno(), ready)
    try:
        await waiter
    finally:
        remove(sock.fileno())


Take = Callable[[socket.socket, bytes], Awaitable["asyncio.Future[int] | None"]]
"""What a service does with a handed connection: serve ``socket`` as if ``bytes`` had been read from it; the
status its request is answered with, once it is (``None``: it will not say)."""


async def receive(conn: socket.socket) -> tuple[socket.socket, bytes]:
    """One handed connection and its request, read from ``conn`` (an accepted hand-off connection).

    Raises ``ConnectionError`` for anything but one stream socket and a whole request within the limits; a
    descriptor received with a refused message is closed, never kept."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    received: list[int] = []
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT):
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                if len(data) >= 4 and int.from_bytes(data[:4], "big") > HEAD_LIMIT:
                    raise ConnectionError("the handed request is too large")
                try:
                    chunk, fds, flags, _ = socket.recv_fds(conn, HEAD_LIMIT + 4, 4)
                except BlockingIOError:
                    await _ready(loop.add_reader, loop.remove_reader, conn)
                    continue
                received.extend(fds)
                if flags & socket.MSG_CTRUNC:
                    raise ConnectionError("a hand-off came with more descriptors than one")
                if not chunk:
                    raise ConnectionError("the hand-off ended before its request")
                data += chunk
        if len(received) != 1:
            raise ConnectionError(f"a hand-off came with {len(received)} descriptors, not one")
        try:
            handed = socket.socket(fileno=received[0])
        except OSError:
            raise ConnectionError("a hand-off's descriptor is not a socket") from None
        received.clear()  # the socket object owns the descriptor now
        if handed.family not in FAMILIES or handed.type != socket.SOCK_STREAM:
            handed.close()
            raise ConnectionError("a hand-off's descriptor is not a stream socket")
        handed.setblocking(False)
        return handed, bytes(data[4:])
    finally:
        for fd in received:
            with contextlib.suppress(OSError):
                os.close(fd)


async def serve(listener: socket.socket, take: Take) -> None:
    """Accept hand-offs on ``listener`` until cancelled, giving each connection to ``take``."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    pending: set[asyncio.Task[None]] = set()

    async def one(conn: socket.socket) -> None:
        with conn:
            try:
                handed, request = await receive(conn)
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.log("receive", state="error", error=type(exc).__name__)
                return
            try:
                status = await take(handed, request)
            except Exception as exc:  # the connection could not be served: the client sees it end
                handed.close()
                log.log("take", state="error", error=type(exc).__name__)
                return
            with contextlib.suppress(OSError, TimeoutError):
                await loop.sock_sendall(conn, TAKEN)
                if status is not None:
                    async with asyncio.timeout(ANSWER_TIMEOUT):
                        code = await asyncio.shield(status)
                    await loop.sock_sendall(conn, f"{code:03d}".encode())

    try:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            task = asyncio.create_task(one(conn))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        for task in pending:
            task.cancel()
