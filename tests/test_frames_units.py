"""What the zero-copy writers (shared/frames.py, the gateway's hand-off) assume of asyncio's socket transport,
checked on the Python that runs the rack: a real socket pair, a peer that does not read at first."""

from __future__ import annotations

import asyncio
import socket

from services.gateway.handoff import holds_writes
from shared.frames import WRITES_KEEP_VIEWS


async def test_whether_a_transport_keeps_views_is_what_the_writers_assume() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    try:
        buffer = bytearray(b"x" * (4 << 20))  # far more than the socket takes at once
        transport.write(memoryview(buffer))
        assert transport.get_write_buffer_size() > 0
        assert holds_writes(transport)() == WRITES_KEEP_VIEWS
        buffer[:] = b"y" * len(buffer)  # what a writer reusing its buffer does next
        received = bytearray()
        while len(received) < len(buffer):
            try:
                received += theirs.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert (b"y" in received) == WRITES_KEEP_VIEWS
    finally:
        transport.close()
        theirs.close()
