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
from enum import IntEnum

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
