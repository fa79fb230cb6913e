"""The rack's stream protocol, spoken over websockets between the CLI (or any client) and the rack.

Subprotocol ``v1.stream.rack`` (shaped after Kubernetes' ``v5.channel.k8s.io``). Every message is binary;
its first byte is the channel, the rest the payload:

====  =======  ==============================================================================
byte  channel  payload
====  =======  ==============================================================================
0     stdin    bytes for the remote process (client to rack)
1     stdout   bytes the remote process wrote (rack to client); also build and log output
2     stderr   bytes the remote process wrote to stderr
3     status   JSON ``{"exit_code": N}`` or ``{"error": "message"}``: the last message of a stream
4     resize   JSON ``{"width": W, "height": H}`` (client to rack; the first one is applied at start)
255   close    one more byte naming the channel closed; ``[255, 0]`` is stdin EOF
====  =======  ==============================================================================

A stream that ends without a status message is an error, never a silent success.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from pydantic import BaseModel, Field

SUBPROTOCOL = "v1.stream.rack"


class Channel(IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    STATUS = 3
    RESIZE = 4
    CLOSE = 255


class Status(BaseModel):
    exit_code: int | None = None
    error: str | None = None


class Resize(BaseModel):
    width: int = Field(ge=1, le=10_000)
    height: int = Field(ge=1, le=10_000)


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def encode(channel: Channel, payload: bytes = b"") -> bytes:
    return bytes((channel,)) + payload


def decode(message: bytes) -> tuple[Channel, bytes]:
    if not message:
        raise ProtocolError("empty message")
    try:
        channel = Channel(message[0])
    except ValueError:
        raise ProtocolError(f"unknown channel {message[0]}") from None
    return channel, message[1:]


def status(exit_code: int | None = None, error: str | None = None) -> bytes:
    body = Status(exit_code=exit_code, error=error).model_dump(exclude_none=True)
    return encode(Channel.STATUS, json.dumps(body).encode())


def parse_status(payload: bytes) -> Status:
    try:
        return Status.model_validate_json(payload)
    except ValueError:
        raise ProtocolError("malformed status message") from None


def resize(width: int, height: int) -> bytes:
    return encode(Channel.RESIZE, Resize(width=width, height=height).model_dump_json().encode())


def parse_resize(payload: bytes) -> Resize:
    try:
        return Resize.model_validate_json(payload)
    except ValueError:
        raise ProtocolError("malformed resize message") from None


def close(channel: Channel) -> bytes:
    return encode(Channel.CLOSE, bytes((channel,)))


# ---- what a provider hands a service for a process attached to a stream -----------------------------------


class Terminal(BaseModel):
    """How a streamed process's stdio is set up: a TTY of the given size, or plain pipes (``tty=False``)."""

    tty: bool = False
    width: int | None = Field(None, ge=1, le=10_000)
    height: int | None = Field(None, ge=1, le=10_000)

    @property
    def size(self) -> tuple[int, int] | None:
        """``(width, height)`` when both are known."""
        return (self.width, self.height) if self.width and self.height else None


@dataclass
class Stdio:
    """A process's pipes as the engine's own connection (:meth:`ProcessStream.take_stdio`): its socket, in
    blocking mode and now the taker's to close, and what was read of it already: in the engine's multiplexed
    framing (Docker's 8-byte headers, :mod:`shared.rawstream`), or a terminal's bytes as they are (a TTY).
    Writing to it is stdin, ``shutdown(SHUT_WR)`` stdin's EOF; its end is the end of the output."""

    sock: socket.socket
    pending: bytes


class ProcessStream(Protocol):
    """A process whose stdio is a stream: ``convox exec`` or an interactive ``convox run``. Bytes and control,
    nothing of a wire protocol: the service that holds the client's stream frames it.

    The provider validates what it can when it makes one (an unknown pid is a 404 before anything starts).
    :meth:`start` runs the process with the terminal. :meth:`output` yields what it writes until its stdout
    and stderr end, as ``(channel, data)``: :attr:`Channel.STDOUT` or :attr:`Channel.STDERR`, and the bytes,
    possibly a view into the provider's own buffer that holds only until the next one is asked for (the
    consumer sends or copies it first; a provider reads into reused buffers and need not copy). :meth:`write`
    is stdin, :meth:`close_stdin` its EOF, :meth:`resize` the TTY's size, :meth:`wait` returns the exit code.
    :meth:`close` ends the process when it still runs (a hangup for a TTY, a kill otherwise) and frees
    everything; it is always called, once, on every path out.
    """

    async def start(self, terminal: Terminal) -> None: ...

    def output(self) -> AsyncIterator[tuple[Channel, bytes | memoryview]]: ...

    async def write(self, data: bytes | memoryview) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    async def wait(self) -> int: ...

    def take_stdio(self) -> Stdio | None:
        """Once started: the process's stdio as the engine's connection (:class:`Stdio`), for a service to
        move it kernel to kernel or to hand it to its client; :meth:`output`, :meth:`write` and
        :meth:`close_stdin` are not used after it (:meth:`wait`, :meth:`resize` and :meth:`close` are).
        ``None`` when the provider has no such connection to give (an engine reached over TLS): the stream is
        then relayed through :meth:`output` and :meth:`write` as usual."""
        ...

    async def close(self) -> None: ...
