"""uvicorn's HTTP protocol with one addition: a route may take the connection of a raw stream's upgrade
request (``Upgrade: v1.raw.rack``, :mod:`shared.rawstream`) out of the server's hands.

ASGI has no way to answer an HTTP request with anything but an HTTP response, so a request that asks for a
raw stream gets a scope extension, :data:`RAW`: ``{"hand": callable, "release": callable}``. ``hand()`` returns
a duplicate of the connection's descriptor and what the client sent after the request head; the
server reads and writes nothing more of it, and answers nothing for the request (its response, if the route
returns one, is dropped). ``release()`` closes the server's own descriptor of it. The route sets ``"status"``
for the request log. The gateway hands such a connection to the service the request is routed to
(:mod:`shared.handoff`), and the service, whose server is this protocol too, to the stream.

Offered only on a plain unix socket (:mod:`shared.rawstream` says why). Any other route answers the request
as usual, and the connection is closed after it: the bytes the client sent after the head are a stream's, not
another request.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.errors import BadRequest
from shared.rawstream import RAW_PROTOCOL

RAW = "rack.raw_stream"
"""The scope extension of a raw stream's request."""


def raw_extension(scope: Mapping[str, Any]) -> dict[str, Any]:
    """The request's :data:`RAW` extension; a 400 for a raw stream asked where none is served (over HTTPS or
    plain TCP: the connection cannot be taken there)."""
    extension: dict[str, Any] | None = (scope.get("extensions") or {}).get(RAW)
    if extension is None:
        raise BadRequest(f"a raw stream ({RAW_PROTOCOL}) is served over the rack's unix socket only")
    return extension


class Answering:
    """An ASGI app that tells ``answered`` the status its request is answered with: the response's, 101 for
    an accepted websocket (403 for one closed before), or 101 once a raw stream's route takes the connection
    (:meth:`RawUpgradeProtocol.answer_to`)."""

    def __init__(self, app: ASGIApp, answered: asyncio.Future[int]) -> None:
        self.app = app
        self.answered = answered

    def answer(self, status: int) -> None:
        if not self.answered.done():
            self.answered.set_result(status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                self.answer(int(message["status"]))
            elif kind == "websocket.accept":
                self.answer(101)
            elif kind == "websocket.close":
                self.answer(403)  # closed before it was accepted: uvicorn refuses the handshake so
            await send(message)

        await self.app(scope, receive, sending)


class RawUpgradeProtocol(H11Protocol):
    """uvicorn's h11 protocol, offering the connection of a raw stream's request to its route."""

    answering: Answering | None = None

    def answer_to(self, answered: asyncio.Future[int]) -> None:
        """Tell ``answered`` the status this connection's request is answered with (a connection handed over
        by the gateway: the gateway's request log says it, :mod:`shared.handoff`)."""
        self.answering = Answering(self.app, answered)
        self.app = self.answering

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        super().handle_websocket_upgrade(event)
        if self.answering is not None:  # the websocket's protocol answers now: with the same app, told too
            self.transport.get_protocol().app = self.answering  # type: ignore[attr-defined]

    def _raw_requested(self) -> bool:
        return self._get_upgrade() == RAW_PROTOCOL.encode()

    def _should_upgrade(self) -> bool:
        if self.headers is not None and self._raw_requested():
            return False  # not a websocket, and no warning: the route decides
        return super()._should_upgrade()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        # a new request was read: its task is made, not started yet, so its scope can still be added to
        if self.cycle is not cycle and self.cycle is not None and self._raw_requested():
            self.cycle.keep_alive = False
            sock = self.transport.get_extra_info("socket")
            plain = self.transport.get_extra_info("ssl_object") is None
            if sock is not None and plain and sock.family == socket.AF_UNIX:
                extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
                extensions[RAW] = {"hand": self._hand, "release": self._release}

    def _hand(self) -> tuple[int, bytes]:
        if self.answering is not None:
            self.answering.answer(101)
        self.transport.pause_reading()
        self.cycle.disconnected = True  # whatever the route returns is not written
        leftover, _ = self.conn.trailing_data
        return os.dup(self.transport.get_extra_info("socket").fileno()), bytes(leftover)

    def _release(self) -> None:
        self.transport.abort()
