"""`convox services proxy`: a websocket (subprotocol ``v1.stream.rack``) relayed to the backing service's
TCP port, so that a client on the user's machine (psql, mysql, redis-cli) reaches it through the rack.

Bytes from the client come on the stdin channel and go to the server as they are; what the server sends
comes back on the stdout channel. Either side closing ends both. One websocket carries one TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Path, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from shared import stream
from shared.errors import RackError
from shared.http import BAD_INPUT, error_response
from shared.logfmt import Logger
from shared.service import provider_of
from shared.stream import Channel
from shared.websocket import accept, refuse, upgrade_required

log = Logger("provisioner")
router = APIRouter(tags=["services"])
CHUNK = 64 * 1024
SOCKET: dict[int | str, dict[str, Any]] = {
    101: {"description": "Switched to a websocket (`Upgrade: websocket`, subprotocol `v1.stream.rack`)"},
    **error_response(426, "This path is a websocket: connect with an upgrade"),
}
CONNECT_TIMEOUT = 10.0


@router.get(
    "/services/{name}/proxy",
    name="resource_proxy",
    summary="A TCP connection to the service's server (websocket)",
    description=(
        "A websocket (subprotocol `v1.stream.rack`) relayed to the service's port: the client's bytes on the "
        "stdin channel (0), the server's on stdout (1); either side closing ends both. What `convox services "
        "proxy` listens for locally, one websocket per connection."
    ),
    responses={
        **SOCKET,
        **BAD_INPUT,
        **error_response(404, "No such service"),
        **error_response(409, "The service is not running"),
    },
)
async def resource_proxy(name: str = Path(description="The service's name.", examples=["postgres"])) -> Response:
    return upgrade_required(f"/services/{name}/proxy")


@router.websocket("/services/{name}/proxy")
async def resource_proxy_socket(websocket: WebSocket, name: str) -> None:
    provider = provider_of(websocket)
    try:
        host, port = await provider.resources.address(name)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    except (RackError, OSError, TimeoutError) as exc:
        error = exc if isinstance(exc, RackError) else RackError(f"service {name} does not answer", status=409)
        await refuse(websocket, error)
        return
    await accept(websocket)
    log.log("proxy.start", service=name)

    async def inbound() -> None:  # client -> server
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or b""
            if not data:
                continue
            if data[0] == Channel.STDIN:
                writer.write(data[1:])
                await writer.drain()
            elif data[0] == Channel.CLOSE:
                with contextlib.suppress(OSError):
                    writer.write_eof()

    async def outbound() -> None:  # server -> client
        while chunk := await reader.read(CHUNK):
            await websocket.send_bytes(stream.encode(Channel.STDOUT, chunk))

    tasks = [asyncio.create_task(inbound()), asyncio.create_task(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await websocket.send_bytes(stream.status(exit_code=0))
                await websocket.close(code=1000)
        log.log("proxy.end", service=name)
