"""The websocket connection of the CLI's streams: the library's own, fed from one receive buffer.

asyncio hands a plain :class:`asyncio.Protocol` a new ``bytes`` for every read, and its TLS transport makes
that object by decrypting record by record (16 KiB each) into new objects and joining them: two objects and
one copy of everything received, before the websocket library copies it into its own reader. A
:class:`asyncio.BufferedProtocol` is given the transport's reads in a buffer of its own instead (TLS records
are decrypted straight into it). :class:`BufferedClientConnection` is ``websockets``' client connection as
such a protocol: every read lands in one buffer used again and again, and the library's reader takes it from
there (it appends what it is fed to its own buffer before :meth:`buffer_updated` returns, so the buffer is free
again). The
handshake, framing, pings and close stay the library's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from websockets.asyncio.client import ClientConnection

READ_SIZE = 256 << 10
"""The most one read of the transport takes (asyncio's TLS transport reads at most this much at a time too)."""
SEND_BUFFER = 4 << 20
"""What the rack's unix socket may hold of what this side sends (as :data:`shared.frames.SEND_BUFFER`): a
message of stdin is written whole at once, not partly kept in asyncio's buffer and moved along there."""


class BufferedClientConnection(ClientConnection, asyncio.BufferedProtocol):
    """``websockets``' asyncio client connection, reading into one reused buffer (see the module's doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # the library's reader appends what it is fed to its own buffer (any bytes-like object will do)
        self.data_received(self.read_buffer[:nbytes])  # type: ignore[arg-type]
