"""Handing a connection to a service (shared/handoff.py) over real unix sockets: what is handed arrives whole
and works, and a hostile hand-off (no descriptor, several, one that is not a stream socket, a request past the
limit, one that never ends) is refused with every descriptor it carried closed."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared import handoff


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[Path, list[tuple[socket.socket, bytes]]]]:
    """A hand-off socket served by :func:`handoff.serve`; what it takes is collected."""
    path = tmp_path / "svc.hand"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    taken: list[tuple[socket.socket, bytes]] = []

    async def take(handed: socket.socket, request: bytes) -> None:
        taken.append((handed, request))

    serving = asyncio.create_task(handoff.serve(sock, take))
    try:
        yield path, taken
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        sock.close()
        for handed, _ in taken:
            handed.close()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for ``check`` (what the service does with a refused hand-off has no event to wait on)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_handed_socket_arrives_with_its_request_and_carries_the_stream(
    listener: tuple[Path, list[tuple[socket.socket, bytes]]],
) -> None:
    path, taken = listener
    client, server_end = socket.socketpair()
    try:
        conn = await handoff.connect(path)
        with conn:
            await handoff.hand(conn, server_end.fileno(), b"GET /x HTTP/1.1\r\n\r\nfirst bytes")
        server_end.close()  # the gateway's copy: the service's own keeps the connection open
        [(handed, request)] = taken
        assert request == b"GET /x HTTP/1.1\r\n\r\nfirst bytes"
        handed.setblocking(True)
        client.sendall(b"ping")
        assert handed.recv(4) == b"ping"
        handed.sendall(b"pong")
        assert client.recv(4) == b"pong"
        handed.close()
        assert client.recv(1) == b""  # the last copy closed: the client sees the end
    finally:
        client.close()


async def send_raw(path: Path, message: bytes, fds: list[int]) -> bytes:
    """A hand-off as a hostile peer might send it; what the service answered (``b""``: nothing)."""
    loop = asyncio.get_running_loop()
    conn = await handoff.connect(path)
    with conn:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        conn.sendmsg([message], ancillary)
        conn.shutdown(socket.SHUT_WR)
        return await asyncio.wait_for(loop.sock_recv(conn, 1), 10)


def framed(request: bytes) -> bytes:
    return len(request).to_bytes(4, "big") + request


async def test_a_hand_off_without_a_descriptor_is_refused(
    listener: tuple[Path, list[tuple[socket.socket, bytes]]],
) -> None:
    path, taken = listener
    assert await send_raw(path, framed(b"GET / HTTP/1.1\r\n\r\n"), []) == b""
    assert taken == []


async def test_a_hand_off_of_something_else_than_a_stream_socket_is_refused_and_closed(
    listener: tuple[Path, list[tuple[socket.socket, bytes]]],
) -> None:
    path, taken = listener
    read_end, write_end = os.pipe()
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        before = open_fds()
        for fd in (read_end, datagram.fileno()):
            assert await send_raw(path, framed(b"GET / HTTP/1.1\r\n\r\n"), [fd]) == b""
        assert taken == []
        await until(lambda: open_fds() <= before)  # the service closed what it was sent
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 1) == b""  # no other copy of the pipe's write end is left anywhere
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        datagram.close()


async def test_a_hand_off_of_two_descriptors_is_refused_and_both_are_closed(
    listener: tuple[Path, list[tuple[socket.socket, bytes]]],
) -> None:
    path, taken = listener
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    try:
        assert await send_raw(path, framed(b"GET / HTTP/1.1\r\n\r\n"), [first.fileno(), second.fileno()]) == b""
        first.close()
        second.close()
        assert taken == []
        first_peer.settimeout(5)
        second_peer.settimeout(5)
        assert first_peer.recv(1) == b"" and second_peer.recv(1) == b""  # the service kept no copy
    finally:
        for sock in (first, first_peer, second, second_peer):
            sock.close()


async def test_a_request_past_the_limit_or_cut_short_is_refused(
    listener: tuple[Path, list[tuple[socket.socket, bytes]]],
) -> None:
    path, taken = listener
    client, server_end = socket.socketpair()
    try:
        too_large = (handoff.HEAD_LIMIT + 1).to_bytes(4, "big") + b"x" * 100
        assert await send_raw(path, too_large, [server_end.fileno()]) == b""
        cut_short = (1000).to_bytes(4, "big") + b"GET /"  # then the sender's end: no more bytes come
        assert await send_raw(path, cut_short, [server_end.fileno()]) == b""
        server_end.close()
        assert taken == []
        client.settimeout(5)
        assert client.recv(1) == b""
    finally:
        client.close()
        server_end.close()


async def test_hand_refuses_a_request_past_the_limit_before_sending_anything(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        with pytest.raises(ConnectionError, match="too large"):
            await handoff.hand(ours, theirs.fileno(), b"x" * (handoff.HEAD_LIMIT + 1))
