"""The rack's raw stream protocol, ``v1.raw.rack``: a process's stdio as plain bytes on the connection itself,
over the rack's own unix socket (``convox exec`` with pipes or on a terminal; also a build's log and
``convox logs``, output only, as stdout frames of whole lines and then, unless followed, the status).

A websocket costs a copy of every byte at each end (frames are parsed into messages, a client's frames are
masked) and those copies were the limit of ``convox exec`` (:mod:`bench`). This protocol has no framing of
its own on the hot path, so each end can move bytes kernel to kernel (``splice``): the stream *is* the
engine's own.

The request is an HTTP/1.1 upgrade of a stream route (``GET /apps/{app}/processes/{pid}/exec`` with the
same query as its websocket; the logs' routes), with ``Connection: Upgrade``, ``Upgrade: v1.raw.rack`` and the
rack's credentials; it is authenticated, authorised and routed like every request. A refusal is an HTTP error
with ``{"error": ...}``, as for a websocket's handshake; an accepted stream is answered ``101`` once its process
has started (a process that cannot start is an HTTP error too). From then on:

- rack to client: frames of Docker's multiplexed stream, an 8-byte header (``[type, 0, 0, 0]`` and the
  payload's length, 32-bit big-endian) then the payload: type 1 stdout, 2 stderr (3, the engine's own errors,
  is stderr too); last, one frame of type :data:`STATUS` with the JSON ``{"exit_code": N}`` or
  ``{"error": "..."}``, and the rack closes the connection. A stream that ends without it is an error.
- client to rack: the process's stdin, as it is; the client's ``shutdown(SHUT_WR)`` is stdin's EOF (the
  client still reads to the end). A client that closes the connection ends the process (its process tree is
  killed), as a websocket's disconnect does.

On this host the client may ask for more (``Rack-Stdio: pass``): the engine's connection itself. Then the
``101`` answer says ``Rack-Stdio: passed`` and is followed by one message whose first byte carries the
connection's descriptor (``SCM_RIGHTS``): a 4-byte big-endian length, then what the rack had read of it. The
client reads the engine's frames (as above, without a status) from that connection and writes stdin to it
(its ``shutdown(SHUT_WR)`` is stdin's EOF). Once it has read that stream to its end, it shuts its write side
of the rack's connection; the status frame comes on it, then the rack closes it. Its close, as before, ends
the process. No byte of the stream then passes through the rack: it authenticated, authorised and started the
process, and gave the client a connection that carries that process's stdio and nothing else (the engine
answers no request on a connection it has handed to a process).

Served only over a unix socket: there a closed peer is told apart from a half-closed one (``POLLHUP``), so a
client that goes away never leaves its process running, and there is no network between the two ends to keep
alive (a websocket's pings have nothing to find). Over HTTPS the websocket stays the protocol.

With a TTY (``tty=true``) the process's output is the terminal's bytes, not framed by the engine. Passed, the
client reads them from the engine's connection as they are and writes its keys there; what it sends on the
rack's connection is framed, as the rack's frames are: its terminal's new size (type :data:`RESIZE`), and
nothing else until its ``shutdown(SHUT_WR)``. Not passed (the engine is reached over TLS), the rack sends the
output as stdout frames and the client's keys come as frames of type :data:`STDIN` beside the resizes; the
client's ``shutdown(SHUT_WR)`` is stdin's EOF, as without a TTY. A close ends the process with a hang-up, as
a closed terminal does.

Nothing here imports more than the standard library: the CLI speaks it too.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator, Mapping

RAW_PROTOCOL = "v1.raw.rack"
"""The ``Upgrade`` token of a raw stream."""
HEADER = 8
"""A frame's header: its type, three zero bytes, the payload's length (32-bit big-endian)."""
STDOUT, STDERR, ENGINE_ERROR = 1, 2, 3
STATUS = 0x80
"""The type of the last frame: the stream's status (a type Docker's stream never has)."""
STDIN = 0
RESIZE = 0x81
"""With a TTY, client to rack: the terminal's size, columns then rows, 16-bit big-endian each."""
STDIO, PASS, PASSED = "Rack-Stdio", "pass", "passed"
"""The request header (``Rack-Stdio: pass``) that asks for the engine's connection itself, and the answer's
(``Rack-Stdio: passed``) when it is given."""


def frame_header(kind: int, size: int) -> bytes:
    return bytes((kind, 0, 0, 0)) + size.to_bytes(4, "big")


def status_frame(exit_code: int | None = None, error: str | None = None) -> bytes:
    body: dict[str, object] = {}
    if exit_code is not None:
        body["exit_code"] = exit_code
    if error is not None:
        body["error"] = error
    payload = json.dumps(body).encode()
    return frame_header(STATUS, len(payload)) + payload


def wants_raw(headers: Mapping[str, str]) -> bool:
    """Whether a request's headers (looked up by lower-case names) ask for a raw stream."""
    upgrade = (headers.get("upgrade") or "").strip().lower()
    connection = {token.strip().lower() for token in (headers.get("connection") or "").split(",")}
    return upgrade == RAW_PROTOCOL and "upgrade" in connection


def accepted(passed: bool = False) -> bytes:
    """The rack's answer that accepts a raw stream (``passed``: with the engine's connection, :data:`STDIO`)."""
    extra = f"{STDIO}: {PASSED}\r\n" if passed else ""
    return (
        f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {RAW_PROTOCOL}\r\n{extra}\r\n"
    ).encode()


def resize_frame(columns: int, rows: int) -> bytes:
    return frame_header(RESIZE, 4) + min(columns, 0xFFFF).to_bytes(2, "big") + min(rows, 0xFFFF).to_bytes(2, "big")


def parse_resize(payload: bytes) -> tuple[int, int] | None:
    """``(columns, rows)`` of a :data:`RESIZE` frame's payload; None for one that is no size."""
    if len(payload) != 4:
        return None
    columns, rows = int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big")
    return (columns, rows) if columns and rows else None


class Unframer:
    """Whole frames ``(type, payload)`` out of a stream's bytes, however they were cut."""

    def __init__(self, first: bytes = b"") -> None:
        self.data = bytearray(first)

    def feed(self, chunk: bytes | memoryview = b"") -> Iterator[tuple[int, bytes]]:
        self.data += chunk
        data, pos = self.data, 0
        while len(data) - pos >= HEADER:
            end = pos + HEADER + int.from_bytes(data[pos + 4 : pos + 8], "big")
            if end > len(data):
                break
            yield data[pos], bytes(data[pos + HEADER : end])
            pos = end
        del data[:pos]


def frames(sock: socket.socket, first: bytes = b"", read: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Each whole frame of a raw stream, ``(type, payload)``, as soon as it has come (a blocking read of
    whatever is there, never waiting for more), from what came with the answer (``first``) on, until the
    connection ends. Read into one buffer, reused (a fresh one per read is an allocation of ``read`` bytes,
    and two system calls, for each message of a followed log)."""
    unframer = Unframer(first)
    yield from unframer.feed()
    view = memoryview(bytearray(read))
    while got := sock.recv_into(view):
        yield from unframer.feed(view[:got])


def wait_hangup(fd: int) -> None:
    """Block until the peer of the unix socket ``fd`` has closed it altogether, or it is shut down on this
    side (``POLLHUP`` either way: a peer that only shut its write side down does not raise it)."""
    poller = select.poll()
    poller.register(fd, 0)  # nothing asked for: only a hang-up or an error wakes it
    while not poller.poll():
        pass
