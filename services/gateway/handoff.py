"""Streams passed through the gateway without being read, or handed to the service.

The gateway authenticates, authorises and routes a websocket's upgrade request like any other request. Then,
instead of speaking websocket on both sides and relaying message by message, it sends the upgrade request on
to the service over the service's unix socket (the client's credentials replaced by the internal secret, its
``Sec-WebSocket-*`` headers kept: the handshake is the client's and the service's), passes the service's answer
back, and from then on moves bytes both ways as they come: no websocket frame is parsed or made here, pings,
close codes and the exit status travel end to end. Flow control joins the two connections (a side that cannot
take more stops the reading of the other), and either side's end ends the other, so a service that goes away
ends the client's stream and a client that goes away ends the service's (which ends the process).

A stream over a plain socket (the rack's own unix socket, which the CLI on the rack's machine uses, or plain
HTTP) is not pumped at all: its socket itself is handed to the service (:mod:`shared.handoff`, ``SCM_RIGHTS``)
and the gateway holds nothing of it. Over HTTPS it is pumped: a TLS session cannot be handed to another
process from Python, so the gateway holds the session and encrypts, which is a byte pump's job. Measured
(``python -m bench``, 512 MiB): over TLS the gateway spends 0.82 s of CPU per GiB of exec output and 1.12 s per
GiB of stdin, nearly all of it TLS; handed over the rack's socket, none (exec 0.60x -> 0.87x of docker exec).

:class:`RawWebSocketProtocol` is uvicorn's websocket protocol with one addition: the route can take the
connection over (``scope["extensions"]["rack.raw"]``) before anything was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from shared.frames import WRITES_KEEP_VIEWS

RAW = "rack.raw"
"""The scope extension of a connection that can be taken over: ``{"take": callable}``; the route that takes it
sets ``"status"`` (for the request log)."""
CHUNK = 256 << 10
"""Bytes read from the service at a time, into one buffer used again and again."""
HEAD_LIMIT = 64 << 10
"""The most a service's handshake answer (its head and a refusal's body) may be."""


class RawWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol whose connection the app may take over after the upgrade request."""

    pump: Pump | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            plain = self.transport.get_extra_info("sslcontext") is None
            scope["extensions"][RAW] = {
                "take": self.take,
                "hand": self.hand if plain else None,
                "release": self.release,
            }

    def take(self) -> Pump:
        """The client's connection, now the app's: uvicorn will write nothing more on it (no answer, no
        pings, no close frame)."""
        self.stop_keepalive()
        self.handshake_complete = True
        self.close_sent = True
        leftover = bytes(self.conn.reader.buffer)  # what came after the request head (nothing, for a client
        self.conn.reader.buffer.clear()  # that waits for the answer, as a websocket client does)
        self.pump = Pump(self.transport, leftover)
        return self.pump

    def hand(self) -> tuple[int, bytes]:
        """The client's connection, to be handed to a service (:mod:`shared.handoff`): a duplicate of its
        descriptor and what was read of it after the request head. Nothing more is read or written here; the
        caller closes the duplicate once it is sent, then calls :meth:`release`."""
        self.stop_keepalive()
        self.handshake_complete = True
        self.close_sent = True
        self.transport.pause_reading()
        leftover = bytes(self.conn.reader.buffer)
        self.conn.reader.buffer.clear()
        return os.dup(self.transport.get_extra_info("socket").fileno()), leftover

    def release(self) -> None:
        """Close this process's descriptor of a handed connection (the service's own keeps it open)."""
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.pump is not None:
            self.pump.from_client(data)
        else:
            super().data_received(data)

    def eof_received(self) -> None:
        if self.pump is not None:
            self.pump.client_ended()

    def pause_writing(self) -> None:
        if self.pump is not None:
            self.pump.client_full(True)
        else:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self.pump is not None:
            self.pump.client_full(False)
        else:
            super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pump is not None:
            self.pump.client_ended()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The gateway is stopping: a stream it passes ends (both connections closed, so the service ends its
        process and the client sees its stream end without a status: an error, never a silent success)."""
        if self.pump is not None:
            self.stop_keepalive()
            self.pump.end()
            return
        super().shutdown()


class Pump:
    """Bytes between the client's connection and the service's, both ways, until either ends."""

    def __init__(self, client: asyncio.Transport, leftover: bytes) -> None:
        self.client = client
        self.pending = leftover
        self.upstream: Upstream | None = None
        self.ended = asyncio.get_running_loop().create_future()

    def attach(self, upstream: Upstream) -> None:
        self.upstream = upstream
        if self.pending:
            upstream.send(self.pending)
            self.pending = b""

    def from_client(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.send(data)
        else:
            self.pending += data

    def client_full(self, full: bool) -> None:
        if self.upstream is not None:
            self.upstream.reading(not full)

    def client_ended(self) -> None:
        self.end()

    def end(self) -> None:
        """Close both connections (each sends what it holds first)."""
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        if not self.ended.done():
            self.ended.set_result(None)


class Upstream(asyncio.BufferedProtocol):
    """The service's side: first its answer to the upgrade (collected whole), then bytes passed to the
    client as they are read, from one buffer used again as long as the client's transport keeps nothing of
    it (a plain socket copies what it cannot send at once; TLS encrypts it at once)."""

    def __init__(self) -> None:
        self.buffer = bytearray(CHUNK)
        self.view = memoryview(self.buffer)
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.answered = asyncio.get_running_loop().create_future()
        self.pump: Pump | None = None
        self.holds: Callable[[], bool] = lambda: False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.pump is not None:
            self.pump.client.write(self.view[:nbytes])
            if self.holds():  # the client's transport kept a view of the buffer: read into a new one
                self.buffer = bytearray(CHUNK)
                self.view = memoryview(self.buffer)
            return
        self.head += self.view[:nbytes]
        if len(self.head) > HEAD_LIMIT and not self.answered.done():
            self.answered.set_exception(ConnectionError("the service's answer is too large"))
        elif b"\r\n\r\n" in self.head and not self.answered.done():
            self.answered.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError("the service closed the connection"))
        if self.pump is not None:
            self.pump.end()

    def pause_writing(self) -> None:
        if self.pump is not None:
            self.pump.client.pause_reading()

    def resume_writing(self) -> None:
        if self.pump is not None and not self.pump.client.is_closing():
            self.pump.client.resume_reading()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def reading(self, on: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def start(self, pump: Pump, rest: bytes) -> None:
        """From now on, pass everything to the client (``rest``: what came after the answer's head)."""
        self.pump = pump
        self.holds = holds_writes(pump.client)
        if rest:
            pump.client.write(rest)
        pump.attach(self)


def holds_writes(transport: asyncio.Transport) -> Callable[[], bool]:
    """Whether ``transport`` may still refer to data given to ``write`` once it returned. A socket transport
    keeps what it does not send at once: as a copy up to Python 3.11, as the view it was given from 3.12 on
    (:data:`shared.frames.WRITES_KEEP_VIEWS`). asyncio's TLS transport encrypts at once, unless the TLS object
    asked to be called again (rare: then it keeps the data in a backlog)."""
    protocol: Any = getattr(transport, "_ssl_protocol", None)
    if protocol is None:
        if WRITES_KEEP_VIEWS:
            return lambda: transport.get_write_buffer_size() > 0
        return lambda: False
    backlog = getattr(protocol, "_write_backlog", None)
    if backlog is None:
        return lambda: True
    return lambda: bool(backlog)


async def read_answer(upstream: Upstream) -> tuple[int, bytes, bytes, bytes]:
    """The service's answer to the upgrade: ``(status, head, body, rest)``; ``rest`` is what followed the head
    of a 101 (the stream's first bytes)."""
    await upstream.answered
    head, _, after = bytes(upstream.head).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    if status == 101:
        return status, head + b"\r\n\r\n", b"", after
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length") or 0)
    while len(upstream.head) - len(head) - 4 < min(length, HEAD_LIMIT):
        upstream.answered = asyncio.get_running_loop().create_future()
        with contextlib.suppress(ConnectionError):
            await upstream.answered
        if upstream.transport is None or upstream.transport.is_closing():
            break
    body = bytes(upstream.head)[len(head) + 4 :][:length]
    return status, head, body, b""
