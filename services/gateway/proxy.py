"""Requests and websockets relayed from the gateway to the internal services over their unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import websockets
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.config import INTERNAL_HEADER, SERVICES
from shared.errors import NotFound, Unavailable

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

    async def relay(self, service: str, websocket: WebSocket) -> None:
        """Relay a websocket both ways, message by message; an upstream refusal reaches the client as is."""
        path = quoted_path(websocket.url.path) + (f"?{websocket.url.query}" if websocket.url.query else "")
        offered = websocket.headers.get("sec-websocket-protocol")
        subprotocols = [p.strip() for p in offered.split(",")] if offered else None
        skip = HOP_BY_HOP | WS_HANDSHAKE
        client_host = websocket.client.host if websocket.client else None
        try:
            upstream = await websockets.unix_connect(
                str(self.sockets[service]),
                f"ws://{service}{path}",
                additional_headers=self.headers(websocket.headers.items(), client_host, skip),
                subprotocols=subprotocols,
                max_size=None,
                compression=None,  # a local socket: deflate would only cost CPU
                ping_interval=20,
                ping_timeout=60,
                open_timeout=10,
            )
        except InvalidStatus as exc:
            body = bytes(exc.response.body or b"")
            await websocket.send_denial_response(
                Response(body, status_code=exc.response.status_code, media_type="application/json")
            )
            return
        except (TimeoutError, OSError):
            raise Unavailable(f"{service} service unavailable") from None
        said = upstream.response.headers.raw_items() if upstream.response is not None else []
        forwarded = [(name.lower().encode(), value.encode()) for name, value in said if name.lower().startswith("x-")]
        await websocket.accept(subprotocol=upstream.subprotocol, headers=forwarded or None)

        async def client_to_upstream() -> None:
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        code = message.get("code", 1000)
                        await upstream.close(code=1000 if code in (1005, 1006) else code)
                        return
                    data = message.get("bytes")
                    await upstream.send(data if data is not None else message.get("text", ""))
            except (WebSocketDisconnect, ConnectionClosed):
                await upstream.close()

        async def upstream_to_client() -> None:
            try:
                async for data in upstream:
                    if isinstance(data, bytes):
                        await websocket.send_bytes(data)
                    else:
                        await websocket.send_text(data)
            except ConnectionClosed:
                pass
            code = upstream.close_code or 1011
            reason = upstream.close_reason or ""
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close(code=1000 if code == 1005 else code, reason=reason)

        tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[0] in done:
                # the client went away: give the service a moment to see the close, then stop relaying
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(tasks[1]), 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()


def not_routed(path: str) -> NotFound:
    return NotFound(f"no such route: {path}")
