"""The handshake and the end of the rack's websocket routes, written once for every service.

A route either refuses the handshake (:func:`refuse`: the error's status and ``{"error": ...}`` as a plain
HTTP answer where the server can send one, else close code 1008 with the message), or accepts it with the
rack's stream subprotocol when the client offers it (:func:`accept`), and at the end closes it if it is
still open (:func:`close`). A plain GET on a websocket route gets 426 naming the upgrade it needs
(:func:`upgrade_required`), documented like every other answer.
"""

from __future__ import annotations

import contextlib

from fastapi import WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from shared.errors import RackError
from shared.stream import SUBPROTOCOL

REASON_BYTES = 120
"""A close frame's reason is at most 123 bytes: the message is cut to fit."""


async def refuse(websocket: WebSocket, error: RackError) -> None:
    """Answer the handshake with the error's status and ``{"error": ...}`` instead of accepting it."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"error": error.message}, status_code=error.status))
    else:
        await websocket.close(code=1008, reason=error.message.encode()[:REASON_BYTES].decode(errors="ignore"))


async def accept(websocket: WebSocket, headers: dict[str, str] | None = None) -> None:
    """Accept the handshake, choosing the rack's stream subprotocol when the client offers it (with
    ``headers`` in the answer)."""
    offered = websocket.scope.get("subprotocols") or []
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None, headers=extra or None)


async def close(websocket: WebSocket, code: int = 1000) -> None:
    """Close the connection if it is still open; a client that has gone already is not an error."""
    if websocket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.close(code=code)


def upgrade_required(path: str) -> JSONResponse:
    """The answer to a plain request on a websocket route."""
    return JSONResponse(
        {"error": f"{path} is a websocket: connect with an upgrade and the subprotocol {SUBPROTOCOL}"},
        status_code=426,
        headers={"Upgrade": "websocket"},
    )
