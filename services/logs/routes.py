"""Log streams over websockets (subprotocol ``v1.stream.rack``, see :mod:`shared.stream`).

``/apps/{app}/logs``, ``/apps/{app}/processes/{pid}/logs`` and ``/system/logs`` (also ``/apps/convox/logs``).
Query: ``since`` (RFC 3339 time or a duration such as ``2m``, ``1h30m``; none for the whole history),
``follow`` (default true), ``service`` (a process type), ``filter`` (text a line contains), ``pid``.

Each channel-1 message carries whole lines ``TIMESTAMP TYPE:RELEASE/PID LINE\\n`` (a line is never split
across messages). Without ``follow`` the stream ends with a status message ``{"exit_code": 0}``; an error
ends it with ``{"error": ...}``. A refused request (unknown app or pid, bad query) is an HTTP answer with
``{"error": ...}`` instead of the handshake. Keepalive pings come from the server (uvicorn).

Over the rack's unix socket the plain GET of these routes may ask for a raw stream instead
(:mod:`shared.rawstream`, as the CLI there does): the same messages as frames, no websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from shared import rawstream, stream
from shared.errors import BadRequest, RackError
from shared.http import error_response
from shared.limits import Slots
from shared.logfmt import Logger
from shared.models import RACK_APP
from shared.params import app_path, pid_path
from shared.rawhttp import raw_extension
from shared.rawserve import Direct, serve_output
from shared.service import provider_of
from shared.stream import Channel
from shared.websocket import accept, refuse

log = Logger("logs")
router = APIRouter()

MESSAGE_BYTES = 256 * 1024
"""Lines are packed into messages of about this size (a longer line goes alone, whole)."""
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``2m``, ``1h30m``, ``2d``, ``90s`` (ago) or an RFC 3339 time; empty for no bound."""
    if not value:
        return None
    match = DURATION.fullmatch(value)
    if match and any(match.groups()):
        days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        return (now or datetime.now(UTC)) - delta
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        expected = "a duration such as 2m or 1h30m, or an RFC 3339 time"
        raise BadRequest(f"since: expected {expected}, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_follow(value: str | None) -> bool:
    if value is None or value == "":
        return True
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"follow: expected true or false, got {value!r}")


def follows_of(app: Any) -> Slots:
    """The service's cap on followed streams (a default one for an app made without it)."""
    slots = getattr(app.state, "follows", None)
    if not isinstance(slots, Slots):
        slots = app.state.follows = Slots("log follows", 500, "RACK_LOGS_MAX_FOLLOWS")
    return slots


async def _send(websocket: WebSocket, batch: list[bytes]) -> None:
    parts: list[bytes] = []
    size = 0
    for data in batch:
        if parts and size + len(data) > MESSAGE_BYTES:
            await websocket.send_bytes(b"".join(parts))
            parts, size = [], 0
        if not parts:
            parts.append(bytes((Channel.STDOUT,)))
        parts.append(data)
        size += len(data)
    if parts:
        await websocket.send_bytes(b"".join(parts))


async def _close(websocket: WebSocket, exit_code: int | None = None, error: str | None = None) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if exit_code is not None or error is not None:
            await websocket.send_bytes(stream.status(exit_code=exit_code, error=error))
        await websocket.close(code=1000)


async def serve(
    websocket: WebSocket, lines: AsyncIterator[list[bytes]], what: dict[str, str], follow: bool = True
) -> None:
    """Validate (the stream's first batch), accept, then relay batches until the end or the client leaves. A
    followed stream holds one of the service's follow slots while it is open."""
    slots = follows_of(websocket.app)
    try:
        if follow:
            slots.take()
    except RackError as exc:
        await refuse(websocket, exc)
        return
    try:
        await _serve(websocket, lines, what)
    finally:
        if follow:
            slots.give()


async def _serve(websocket: WebSocket, lines: AsyncIterator[list[bytes]], what: dict[str, str]) -> None:
    try:
        first = await anext(lines)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    except StopAsyncIteration:
        first = []
    await accept(websocket)
    sent = 0

    async def send() -> None:
        nonlocal sent
        if first:
            await _send(websocket, first)
            sent += len(first)
        async for batch in lines:
            await _send(websocket, batch)
            sent += len(batch)

    async def receive() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender = asyncio.create_task(send())
    receiver = asyncio.create_task(receive())
    outcome = "end"
    try:
        await asyncio.wait([sender, receiver], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        with contextlib.suppress(Exception):
            await lines.aclose()  # type: ignore[attr-defined]
    if receiver.done() and not receiver.cancelled() and sender.cancelled():
        outcome = "client_closed"
    elif sender.done() and not sender.cancelled():
        error = sender.exception()
        if error is None:
            await _close(websocket, exit_code=0)
        elif isinstance(error, WebSocketDisconnect | OSError):
            outcome = "client_closed"
        elif isinstance(error, RackError):
            outcome = "error"
            await _close(websocket, error=error.message)
        else:
            outcome = "error"
            log.error("stream", error=type(error).__name__, **what)
            await _close(websocket, error=f"internal error ({type(error).__name__})")
    if websocket.client_state == WebSocketState.CONNECTED:
        await _close(websocket)
    log.log("stream.end", outcome=outcome, lines=sent, **what)


def _options(websocket: WebSocket) -> tuple[datetime | None, bool, str, str]:
    query = websocket.query_params
    return (
        parse_since(query.get("since")),
        parse_follow(query.get("follow")),
        query.get("service") or "",
        query.get("filter") or "",
    )


# ---- plain GET: the same streams as text, for curl and generated clients --------------------------------------

SOCKET_DOC = (
    "The websocket on this path (subprotocol `v1.stream.rack`) streams the same lines and, with `follow` "
    "(its default), goes on with new ones, with keepalive pings; a plain GET answers the lines as text/plain "
    "(`follow` false by default). Lines: `TIMESTAMP TYPE:RELEASE/PID LINE`, RFC 3339 in UTC, in time order. "
    "Over the rack's unix socket, a GET with `Connection: Upgrade` and `Upgrade: v1.raw.rack` makes it a raw "
    "stream: each batch of whole lines a stdout frame, then (unless followed) a status frame."
)
RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/plain": {}}, "description": "The lines"},
    101: {"description": "Switched to a websocket (`Upgrade: websocket`, subprotocol `v1.stream.rack`)"},
    **error_response(400, "Bad input"),
    **error_response(404, "No such app or process"),
    **error_response(429, "Too many log streams followed at once (RACK_LOGS_MAX_FOLLOWS)"),
}
Since = Query(None, description="A duration ago (`2m`, `1h30m`, `2d`) or an RFC 3339 time; none: all history.")
Follow = Query(False, description="Keep the response open and stream new lines.")
ServiceQuery = Query("", description="Only this process type (and the platform's events about it).")
FilterQuery = Query("", description="Only lines containing this text.")


async def _opened(request: Request, lines: AsyncIterator[list[bytes]], follow: bool) -> list[bytes]:
    """A followed stream's slot taken (429) and the stream's first batch (404, 400): both before anything is
    sent. The slot is the caller's to give back once the stream has ended."""
    slots = follows_of(request.app)
    if follow:
        slots.take()
    try:
        return await anext(lines)
    except BaseException:
        if follow:
            slots.give()
        raise


def _direct(request: Request, follow: bool) -> Direct | None:
    """A followed raw stream's way for new lines to go out as the store releases them (:class:`Direct`)."""
    return Direct() if follow and rawstream.wants_raw(request.headers) else None


async def _answer(
    request: Request, lines: AsyncIterator[list[bytes]], follow: bool, direct: Direct | None = None
) -> Response:
    """The lines as text, or as a raw stream (:mod:`shared.rawstream`) when one is asked for."""
    if rawstream.wants_raw(request.headers):
        return await _raw(request, lines, follow, direct)
    return await _text(request, lines, follow)


async def _raw(
    request: Request, lines: AsyncIterator[list[bytes]], follow: bool, direct: Direct | None = None
) -> Response:
    """The lines as a raw stream over the rack's socket (as the CLI there follows a log): each batch of whole
    lines a stdout frame, then (unless followed) the status, ``{"exit_code": 0}`` or ``{"error": ...}``."""
    extension = raw_extension(request.scope)
    first = await _opened(request, lines, follow)
    failed: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        if first:
            yield b"".join(first)
        try:
            async for batch in lines:
                yield b"".join(batch)
        except RackError as exc:
            failed.append(exc.message)

    async def status() -> bytes:
        return rawstream.status_frame(error=failed[0]) if failed else rawstream.status_frame(exit_code=0)

    try:
        await serve_output(extension, chunks(), status, log, direct)
    finally:
        if follow:
            follows_of(request.app).give()
        with contextlib.suppress(Exception):
            await lines.aclose()  # type: ignore[attr-defined]
    return Response(status_code=101)  # not written: the connection is the stream's


async def _text(request: Request, lines: AsyncIterator[list[bytes]], follow: bool) -> StreamingResponse:
    """The lines as text; a followed stream holds one of the service's follow slots until it ends."""
    first = await _opened(request, lines, follow)
    slots = follows_of(request.app)
    held = [follow]

    async def give_back() -> None:  # once, whether the body ran to its end, was cut off or never started
        if held[0]:
            held[0] = False
            slots.give()

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield b"".join(first)
            async for batch in lines:
                yield b"".join(batch)
        finally:
            await give_back()

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8", background=BackgroundTask(give_back))


@router.get("/apps/{app}/logs", name="app_logs", tags=["logs"], summary="An app's log", description=SOCKET_DOC,
            responses=RESPONSES, response_class=StreamingResponse)  # fmt: skip
async def app_logs(
    request: Request,
    app: str = app_path("The app's name (`convox`: the rack itself)."),
    since: str | None = Since,
    follow: bool = Follow,
    service: str = ServiceQuery,
    filter: str = FilterQuery,
    pid: str = Query("", description="Only this process."),
) -> Response:
    provider = provider_of(request)
    moment = parse_since(since)
    if app == RACK_APP:
        return await _answer(
            request, provider.logs.system(since=moment, follow=follow, service=service, filter=filter), follow
        )
    direct = _direct(request, follow)
    lines = provider.logs.app(app, since=moment, follow=follow, service=service, pid=pid, filter=filter, sink=direct)
    return await _answer(request, lines, follow, direct)


@router.get("/apps/{app}/processes/{pid}/logs", name="process_logs", tags=["logs"], summary="One process's log",
            description=SOCKET_DOC, responses=RESPONSES, response_class=StreamingResponse)  # fmt: skip
async def process_logs(
    request: Request,
    app: str = app_path(),
    pid: str = pid_path("The process id (also of a process that is gone)."),
    since: str | None = Since,
    follow: bool = Follow,
    filter: str = FilterQuery,
) -> Response:
    provider = provider_of(request)
    direct = _direct(request, follow)
    lines = provider.logs.app(app, since=parse_since(since), follow=follow, pid=pid, filter=filter, sink=direct)
    return await _answer(request, lines, follow, direct)


@router.get("/system/logs", name="system_logs", tags=["logs"], summary="The rack's own log", description=SOCKET_DOC,
            responses=RESPONSES, response_class=StreamingResponse)  # fmt: skip
async def system_logs(
    request: Request,
    since: str | None = Since,
    follow: bool = Follow,
    service: str = Query("", description="Only this service of the rack (`gateway`)."),
    filter: str = FilterQuery,
) -> Response:
    provider = provider_of(request)
    lines = provider.logs.system(since=parse_since(since), follow=follow, service=service, filter=filter)
    return await _answer(request, lines, follow)


# ---- websockets ----------------------------------------------------------------------------------------------


@router.websocket("/apps/{app}/logs")
async def app_logs_socket(websocket: WebSocket, app: str) -> None:
    """Every process of the app, merged in time order, with platform events (``convox`` is the rack)."""
    provider = provider_of(websocket)
    try:
        since, follow, service, text = _options(websocket)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    pid = websocket.query_params.get("pid") or ""
    if app == RACK_APP:
        lines = provider.logs.system(since=since, follow=follow, service=service, filter=text)
    else:
        lines = provider.logs.app(app, since=since, follow=follow, service=service, pid=pid, filter=text)
    await serve(websocket, lines, {"app": app}, follow)


@router.websocket("/apps/{app}/processes/{pid}/logs")
async def process_logs_socket(websocket: WebSocket, app: str, pid: str) -> None:
    """One process of the app (also after it has gone, from the history)."""
    provider = provider_of(websocket)
    try:
        since, follow, service, text = _options(websocket)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    lines = provider.logs.app(app, since=since, follow=follow, service=service, pid=pid, filter=text)
    await serve(websocket, lines, {"app": app, "pid": pid[:12]}, follow)


@router.websocket("/system/logs")
async def system_logs_socket(websocket: WebSocket) -> None:
    """The rack's own services: ``gateway: ns=gateway at=request ...``."""
    provider = provider_of(websocket)
    try:
        since, follow, service, text = _options(websocket)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    await serve(websocket, provider.logs.system(since=since, follow=follow, service=service, filter=text), {}, follow)
