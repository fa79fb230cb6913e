"""`convox services export` and `import`: a service's logical dump streamed out of the rack or into it, over a
websocket (subprotocol ``v1.stream.rack``, :mod:`shared.stream`).

Export: the dump on the stdout channel (1), as the service's tool writes it, then the status (3):
``{"exit_code": 0}`` once the dump is whole, ``{"error": "..."}`` when the tool failed (what came before is
incomplete). Import: the client sends the dump on the stdin channel (0) and closes it (``[255, 0]``); the
status comes when the service has loaded it, or as soon as the tool refuses it (``{"error": "psql exited
with code 3: ..."}``: the client stops sending). What can be checked is checked before the websocket is
accepted: an unknown service is a 404 on the handshake, one not running a 409, too many transfers a 429.
A client that goes away mid-import ends the tool without finishing (postgres rolls the whole load back).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

from fastapi import APIRouter, Path, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from services.provisioner.settings import ProvisionerSettings
from shared import stream
from shared.archive import human_size
from shared.errors import PayloadTooLarge, RackError
from shared.http import BAD_INPUT, error_response
from shared.limits import Slots
from shared.logfmt import Logger
from shared.service import provider_of
from shared.stream import Channel
from shared.websocket import accept, close, refuse, upgrade_required

log = Logger("provisioner")
router = APIRouter(tags=["services"])
SOCKET: dict[int | str, dict[str, Any]] = {
    101: {"description": "Switched to a websocket (`Upgrade: websocket`, subprotocol `v1.stream.rack`)"},
    **error_response(426, "This path is a websocket: connect with an upgrade"),
}
REFUSALS = {
    **BAD_INPUT,
    **error_response(404, "No such service"),
    **error_response(409, "The service is not running, or an import into it is under way"),
    **error_response(429, "Too many exports and imports at once (RACK_PROVISIONER_MAX_TRANSFERS)"),
}
FORMATS = (
    "postgres: `pg_dump` plain SQL (each object dropped if it exists, then made); mysql: `mysqldump` SQL; "
    "redis: an RDB file."
)


class ClientGone(Exception):
    """The client went away before the end of the dump it was sending: the import must not finish."""


def settings_of(websocket: WebSocket) -> ProvisionerSettings:
    settings = getattr(websocket.app.state, "provisioner_settings", None)
    return settings if isinstance(settings, ProvisionerSettings) else ProvisionerSettings()


def transfers_of(websocket: WebSocket) -> Slots:
    """The service's cap on exports and imports at once (a default one for an app made without it)."""
    slots = getattr(websocket.app.state, "transfers", None)
    if not isinstance(slots, Slots):
        limit = settings_of(websocket).max_transfers
        slots = websocket.app.state.transfers = Slots("exports and imports", limit, "RACK_PROVISIONER_MAX_TRANSFERS")
    return slots


async def finish(websocket: WebSocket, error: str | None = None) -> None:
    """The status message (``exit_code`` 0, or the error), then the close."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if error is None:
            await websocket.send_bytes(stream.status(exit_code=0))
        else:
            await websocket.send_bytes(stream.status(error=error))
    await close(websocket)


async def in_transfer_slot(websocket: WebSocket, transfer: Coroutine[Any, Any, None]) -> None:
    slots = transfers_of(websocket)
    try:
        slots.take()
    except RackError as exc:
        transfer.close()
        await refuse(websocket, exc)
        return
    try:
        await transfer
    finally:
        slots.give()


ServiceName = Path(description="The service's name.", examples=["postgres"])


@router.get(
    "/services/{name}/export",
    name="resource_export",
    summary="A logical dump of the service's data (websocket)",
    description=(
        "A websocket (subprotocol `v1.stream.rack`): the dump on the stdout channel (1) as the service's own "
        f'tool writes it, then a status message on channel 3, `{{"exit_code": 0}}` once it is whole or '
        f'`{{"error": "pg_dump exited with code 1: ..."}}`. {FORMATS} What `convox services export` saves.'
    ),
    responses={**SOCKET, **REFUSALS},
)
async def resource_export(name: str = ServiceName) -> Response:
    return upgrade_required(f"/services/{name}/export")


@router.get(
    "/services/{name}/import",
    name="resource_import",
    summary="Load a dump into the service (websocket)",
    description=(
        "A websocket (subprotocol `v1.stream.rack`): the client sends the dump on the stdin channel (0) and "
        "closes it (`[255, 0]`); the status message (channel 3) comes once the service has loaded it, "
        '`{"exit_code": 0}`, or as soon as its tool refuses it, `{"error": "psql exited with code 3: ..."}` '
        "(stop sending then). A dump larger than `RACK_PROVISIONER_MAX_IMPORT_SIZE` bytes is refused the same "
        f"way. {FORMATS} postgres loads in one transaction (all or nothing); redis replaces its whole data set. "
        "What `convox services import` sends."
    ),
    responses={**SOCKET, **REFUSALS},
)
async def resource_import(name: str = ServiceName) -> Response:
    return upgrade_required(f"/services/{name}/import")


@router.websocket("/services/{name}/export")
async def resource_export_socket(websocket: WebSocket, name: str) -> None:
    await in_transfer_slot(websocket, _export(websocket, name))


async def _export(websocket: WebSocket, name: str) -> None:
    provider = provider_of(websocket)
    try:
        chunks = await provider.resources.export(name)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    await accept(websocket)
    sent = 0
    outcome, error = "success", None
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                await websocket.send_bytes(stream.encode(Channel.STDOUT, chunk))
                sent += len(chunk)
    except (WebSocketDisconnect, RuntimeError, OSError):
        outcome = "disconnect"
    except RackError as exc:
        outcome, error = "error", exc
    log.log("resource.export.request", resource=name, bytes=sent, outcome=outcome,
            **({"status": error.status} if error else {}))  # fmt: skip
    if outcome != "disconnect":
        await finish(websocket, error.message if error else None)


@router.websocket("/services/{name}/import")
async def resource_import_socket(websocket: WebSocket, name: str) -> None:
    await in_transfer_slot(websocket, _import(websocket, name))


async def _import(websocket: WebSocket, name: str) -> None:
    provider = provider_of(websocket)
    limit = settings_of(websocket).max_import_size
    received = 0

    async def dump() -> AsyncGenerator[bytes]:
        """The client's bytes; the websocket is accepted when the provider first asks for them (it has checked
        the service by then, so that a refusal is the handshake's answer)."""
        nonlocal received
        await accept(websocket)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            data: bytes | None = message.get("bytes")
            if not data:
                continue
            if data[0] == Channel.STDIN:
                received += len(data) - 1
                if received > limit:
                    raise PayloadTooLarge(
                        f"the dump is larger than {human_size(limit)} (the limit, setting "
                        "RACK_PROVISIONER_MAX_IMPORT_SIZE)"
                    )
                yield data[1:]
            elif data[0] == Channel.CLOSE and data[1:2] == bytes((Channel.STDIN,)):
                return

    incoming = dump()
    try:
        await provider.resources.import_(name, incoming)
    except RackError as exc:
        if websocket.client_state == WebSocketState.CONNECTING:
            await refuse(websocket, exc)
        else:
            log.log("resource.import.request", resource=name, bytes=received, outcome="error", status=exc.status)
            await finish(websocket, exc.message)
        return
    except ClientGone:
        log.log("resource.import.request", resource=name, bytes=received, outcome="disconnect")
        return
    finally:
        await incoming.aclose()
    if websocket.client_state == WebSocketState.CONNECTING:  # a provider that never read the dump
        await accept(websocket)
    log.log("resource.import.request", resource=name, bytes=received, outcome="success")
    await finish(websocket)
