"""Binary websocket messages written from parts, without copying a large payload into a frame first.

uvicorn's websocket protocol (the ``websockets`` library's sans-I/O connection under it) serialises every
message into a new ``bytes`` (the payload copied) before the transport gets it. For bulk output that is one
copy of every byte too many: :class:`FramingProtocol` is that protocol with one more thing a route may use,
``scope["extensions"]["rack.frames"]["send"](prefix, payload)``, which writes one unmasked binary frame
(RFC 6455 section 5.2: a server's frames are never masked) as its head and ``prefix`` in one write and the
payload, as it is (a view into the provider's buffer), in another. Everything else (the handshake, reading,
pings, close) stays the library's. Whole frames are written without an ``await`` between their parts, so
they never interleave with the library's own (pings, close).

:func:`sender` gives a route that function when its server offers it, and one over ``send_bytes`` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

FRAMES = "rack.frames"
SMALL = 16 << 10
"""A payload up to this size is joined to its head (one write) rather than written on its own."""
Sender = Callable[[bytes, bytes | memoryview], Awaitable[None]]
WRITES_KEEP_VIEWS = sys.version_info >= (3, 12)
"""Whether asyncio's socket transport keeps what it cannot send at once as the very object it was given (a
view into a buffer its writer may reuse) rather than a copy: so from Python 3.12 on (measured: 3.11.7 sends
the bytes written, 3.12.1 and 3.13.0 the buffer's later contents)."""


SEND_BUFFER = 4 << 20
"""What a local (unix) socket of a stream may hold unsent: a bulk message written whole at once, not a part
of it left in asyncio's buffer to be copied and moved along as the reader catches up (Linux caps it at
``net.core.wmem_max``)."""


def widen_send_buffer(transport: asyncio.BaseTransport) -> None:
    """Let a unix socket's sends queue up to :data:`SEND_BUFFER` (TCP keeps its own tuning)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def frame_head(length: int) -> bytes:
    """The head of a final, unmasked binary frame of ``length`` bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return bytes((0x82, 126)) + length.to_bytes(2, "big")
    return bytes((0x82, 127)) + length.to_bytes(8, "big")


class FramingProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, able to write a binary message from a prefix and a payload."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        widen_send_buffer(transport)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][FRAMES] = {"send": self.send_parts}

    async def send_parts(self, prefix: bytes, payload: bytes | memoryview) -> None:
        await self.writable.wait()
        if self.disconnected or self.close_sent or not self.handshake_complete or self.transport.is_closing():
            raise ClientDisconnected()
        head = frame_head(len(prefix) + len(payload)) + prefix
        if len(payload) <= SMALL:
            self.transport.write(head + payload)
        else:
            self.transport.write(head)
            if WRITES_KEEP_VIEWS and isinstance(payload, memoryview):
                payload = bytes(payload)  # the caller may reuse the view's buffer once this returns
            self.transport.write(payload)  # sent now, or what is not is kept in the transport's buffer


def sender(websocket: WebSocket) -> Sender:
    """How to send ``prefix + payload`` as one binary message on this websocket."""
    offered = (websocket.scope.get("extensions") or {}).get(FRAMES)
    if offered is not None:
        send: Sender = offered["send"]
        return send

    async def fallback(prefix: bytes, payload: bytes | memoryview) -> None:
        await websocket.send_bytes(prefix + bytes(payload))

    return fallback
