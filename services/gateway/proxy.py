"""Requests relayed from the gateway to the internal services over their unix sockets, websockets passed
through to them unread, and streams handed to them (websockets and raw streams over a plain socket)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocket

from services.gateway.handoff import RAW, Pump, Upstream, read_answer
from shared import handoff
from shared.config import INTERNAL_HEADER, SERVICES
from shared.errors import NotFound, Unavailable
from shared.logfmt import Logger
from shared.rawhttp import raw_extension
from shared.websocket import refuse

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
        "content-length",
    }
)
OWN_HEADERS = frozenset({"date", "server"})
"""Headers the gateway's own server writes; a service's copies are dropped rather than doubled."""
WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
POOL = httpx.Limits(max_connections=None, max_keepalive_connections=100)
PASSED_SKIP = frozenset({"host", "authorization", "proxy-authorization", "x-forwarded-for"})
"""Headers of a client's upgrade request the service does not get (the handshake's own go through)."""
OPEN_TIMEOUT = 10.0
log = Logger("gateway")


def quoted_path(path: str) -> str:
    """The decoded request path percent-encoded again for the upstream request: a control or non-ASCII
    character in it reaches the service (which refuses it as bad input) instead of breaking the request."""
    return quote(path, safe="/:@!$&'()*+,;=-._~")


class Upstreams:
    """One HTTP client per internal service, each bound to the service's unix socket."""

    def __init__(self, sockets: dict[str, Path], secret: str) -> None:
        self.sockets = sockets
        self.secret = secret
        self.clients = {
            name: httpx.AsyncClient(
                # no cap on connections to a local socket: long-lived streams (plain HTTP log follows) must
                # not starve every other request; each service caps its own long-lived work (429)
                transport=httpx.AsyncHTTPTransport(uds=str(path), limits=POOL),
                base_url=f"http://{name}",
                timeout=httpx.Timeout(connect=5.0, read=None, write=60.0, pool=10.0),
            )
            for name, path in sockets.items()
        }

    @classmethod
    def for_rack(cls, run_dir: Path, secret: str) -> Upstreams:
        return cls({name: run_dir / f"{name}.sock" for name in SERVICES}, secret)

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    def headers(
        self, incoming: list[tuple[str, str]], client: str | None, skip: frozenset[str]
    ) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in incoming if k.lower() not in skip and k.lower() != INTERNAL_HEADER]
        out.append((INTERNAL_HEADER, self.secret))
        if client:
            out.append(("x-forwarded-for", client))
        return out

    async def get_json(self, service: str, path: str) -> Any:
        try:
            response = await self.clients[service].get(path, headers={INTERNAL_HEADER: self.secret})
        except (httpx.TransportError, OSError):
            raise Unavailable(f"{service} service unavailable") from None
        response.raise_for_status()
        return response.json()

    async def forward(self, service: str, request: Request) -> Response:
        client = self.clients[service]
        upstream = client.build_request(
            request.method,
            quoted_path(request.url.path),
            params=request.url.query,
            headers=self.headers(request.headers.items(), request.client and request.client.host, HOP_BY_HOP),
            content=request.stream(),
        )
        try:
            response = await client.send(upstream, stream=True)
        except (httpx.TransportError, OSError):
            raise Unavailable(f"{service} service unavailable") from None
        headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP | OWN_HEADERS}

        async def body() -> AsyncIterator[bytes]:
            async for chunk in response.aiter_raw():
                yield chunk

        return StreamingResponse(
            body(), status_code=response.status_code, headers=headers, background=BackgroundTask(response.aclose)
        )

    async def pass_through(self, service: str, websocket: WebSocket) -> None:
        """Pass an authenticated websocket upgrade to ``service`` and then its bytes both ways, unread
        (:mod:`services.gateway.handoff`); a refusal by the service reaches the client as it is."""
        raw = websocket.scope.get("extensions", {}).get(RAW)
        if raw is None:
            await websocket.send_denial_response(
                JSONResponse({"error": "this server cannot pass streams through"}, status_code=501)
            )
            return
        if raw.get("hand") is not None:
            await self.hand_over(service, websocket, raw)
            return
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(
                loop.create_unix_connection(Upstream, str(self.sockets[service])), OPEN_TIMEOUT
            )
        except (TimeoutError, OSError):
            await refuse(websocket, Unavailable(f"{service} service unavailable"))
            return
        try:
            upstream.send(self.upgrade_request(service, websocket))
            async with asyncio.timeout(OPEN_TIMEOUT):
                status, head, body, rest = await read_answer(upstream)
        except (TimeoutError, ConnectionError, ValueError, IndexError):
            upstream.close()
            await refuse(websocket, Unavailable(f"{service} service unavailable"))
            return
        if status != 101:
            upstream.close()
            await websocket.send_denial_response(Response(body, status_code=status, media_type="application/json"))
            return
        pump: Pump = raw["take"]()
        raw["status"] = 101
        pump.client.write(head)
        upstream.start(pump, rest)
        try:
            await asyncio.shield(pump.ended)
        finally:
            pump.end()

    async def hand_over(self, service: str, websocket: WebSocket, raw: dict[str, Any]) -> None:
        """Hand a plain connection's stream to ``service``, socket and all (:mod:`shared.handoff`): the
        service answers the handshake and serves the stream; nothing of it passes here any more. The service
        being unreachable is a 503 answered here; once the socket is sent, the service owns the answer."""
        if not await self._hand(service, websocket, raw, "GET"):
            await refuse(websocket, Unavailable(f"{service} service unavailable"))

    async def hand_over_raw(self, service: str, request: Request) -> Response:
        """A raw stream's request (:mod:`shared.rawstream`), handed to ``service`` as a websocket's is. Only
        a connection over the rack's unix socket can be (:mod:`shared.rawhttp`): elsewhere it is a 400."""
        raw = raw_extension(request.scope)
        if not await self._hand(service, request, raw, request.method):
            raise Unavailable(f"{service} service unavailable")
        return Response(status_code=101)  # not written: the connection is the service's

    async def _hand(self, service: str, connection: HTTPConnection, raw: dict[str, Any], method: str) -> bool:
        """False when the service's hand-off socket cannot be reached (nothing was taken from the client)."""
        try:
            conn = await asyncio.wait_for(handoff.connect(handoff.handoff_path(self.sockets[service])), OPEN_TIMEOUT)
        except (TimeoutError, OSError):
            return False
        with conn:
            fd, leftover = raw["hand"]()
            raw["status"] = 101
            try:
                async with asyncio.timeout(OPEN_TIMEOUT):
                    await handoff.hand(conn, fd, self.upgrade_request(service, connection, method) + leftover)
            except (TimeoutError, OSError) as exc:  # the client sees its connection end without an answer
                log.log("handoff", state="error", service=service, error=type(exc).__name__)
                return True
            finally:
                os.close(fd)
                raw["release"]()
            status = await handoff.answered(conn)  # what the service answered: the request log says it
            if status is not None:
                raw["status"] = status
        return True

    def upgrade_request(self, service: str, connection: HTTPConnection, method: str = "GET") -> bytes:
        """The client's upgrade request as the service gets it: its own path and handshake headers, the
        internal secret instead of the rack's credentials."""
        path = quoted_path(connection.url.path) + (f"?{connection.url.query}" if connection.url.query else "")
        client_host = connection.client.host if connection.client else None
        headers = self.headers(connection.headers.items(), client_host, PASSED_SKIP)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {service}", *(f"{k}: {v}" for k, v in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def not_routed(path: str) -> NotFound:
    return NotFound(f"no such route: {path}")
