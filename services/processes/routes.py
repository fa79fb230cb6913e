"""Processes: ps with CPU and MEM, stop, and the streams — exec, interactive run, live metrics.

Streams are websockets speaking the subprotocol ``v1.stream.rack`` (:mod:`shared.stream`). Each also has a
plain ``GET`` route on its path, documented in the OpenAPI document with its parameters and a ``101``
answer, that answers ``426 Upgrade Required`` to a request without the upgrade. Everything that can be
checked is checked before the websocket is accepted, so that a bad pid or an unknown app is an HTTP 4xx with
``{"error": ...}`` on the handshake (the CLI prints it and exits at once, its terminal untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response, WebSocket
from pydantic import Field
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from services.processes import raw
from shared import rawstream, stream
from shared.errors import BadRequest, RackError
from shared.frames import sender
from shared.http import BAD_INPUT, ENGINE_UNAVAILABLE, error_response
from shared.limits import Slots
from shared.logfmt import Logger
from shared.models import Model, Process, ProcessRunOptions
from shared.names import check_env, parse_pair
from shared.params import app_path, pid_path, type_path
from shared.provider import Provider
from shared.rawhttp import raw_extension
from shared.rawserve import taken
from shared.service import provider_of
from shared.stream import Channel, ProcessStream, Terminal
from shared.websocket import accept, close, refuse, upgrade_required

METRICS_INTERVAL = "X-Metrics-Interval"
"""The handshake header giving the seconds between two metrics messages (the provider's sampling)."""
log = Logger("processes")
router = APIRouter(responses=ENGINE_UNAVAILABLE)

AppPath = app_path()
PidPath = pid_path()
ServicePath = type_path()
NOT_FOUND = error_response(404, "No such app or process")
SOCKET: dict[int | str, dict[str, Any]] = {
    101: {"description": "Switched to a websocket (`Upgrade: websocket`, subprotocol `v1.stream.rack`)"},
    **error_response(426, "This path is a websocket: connect with an upgrade"),
}
FIRST_RESIZE_WAIT = 1.0
"""Seconds a TTY stream without width/height in its query waits for a first resize message before starting."""
SAFE_WORD = re.compile(r"^[A-Za-z0-9_./:=@%+,-]+$")


def shell_words(command: list[str] | str) -> list[str]:
    """The argv to run. A command given as one string runs under ``sh -c`` (so ``'echo $X'`` expands in the
    container); one word without shell syntax is run as it is, like a list of words."""
    if isinstance(command, str):
        return ["sh", "-c", command] if command.strip() else []
    if len(command) == 1 and not SAFE_WORD.fullmatch(command[0]):
        return ["sh", "-c", command[0]]
    return list(command)


# ---- plain routes -------------------------------------------------------------------------------------------


@router.get(
    "/apps/{app}/processes",
    name="process_list",
    tags=["processes"],
    summary="List an app's processes with CPU and MEM",
    description=(
        "Every running process of the app (process types and one-off runs). `cpu` and `memory` are fractions "
        "(0.2068 = 20.68%) computed as `docker stats` computes them, from samples kept in the background."
    ),
    responses={**BAD_INPUT, **NOT_FOUND},
)
async def process_list(
    app: str = AppPath,
    service: Annotated[str | None, Query(description="Only this process type.")] = None,
    release: Annotated[str | None, Query(description="Only processes of this release.")] = None,
    stats: Annotated[bool, Query(description="Include CPU and MEM (false: faster, zeros).")] = True,
    provider: Provider = Depends(provider_of),
) -> list[Process]:
    return await provider.processes.list(app, service=service or None, release=release or None, stats=stats)


@router.get(
    "/apps/{app}/processes/metrics",
    name="process_metrics",
    tags=["processes"],
    summary="Live CPU and MEM of an app's processes (websocket)",
    description=(
        "A websocket (subprotocol `v1.stream.rack`). Every sampling interval of the provider (seconds, in the "
        "handshake's `X-Metrics-Interval` header: 1 on the local provider) a message on channel 1 (stdout) whose "
        "payload is the JSON list of the app's processes, as `GET /apps/{app}/processes` returns it, with fresh `cpu` "
        'and `memory`; until the client closes. A failure ends it with a status message `{"error": "..."}`.'
    ),
    responses={**SOCKET, **NOT_FOUND},
)
async def process_metrics(
    app: str = AppPath,
    service: Annotated[str | None, Query(description="Only this process type.")] = None,
    release: Annotated[str | None, Query(description="Only processes of this release.")] = None,
) -> Response:
    return upgrade_required(f"/apps/{app}/processes/metrics")


@router.get(
    "/apps/{app}/processes/{pid}",
    name="process_get",
    tags=["processes"],
    summary="Show a process",
    responses={**BAD_INPUT, **NOT_FOUND},
)
async def process_get(app: str = AppPath, pid: str = PidPath, provider: Provider = Depends(provider_of)) -> Process:
    return await provider.processes.get(app, pid)


@router.delete(
    "/apps/{app}/processes/{pid}",
    name="process_stop",
    tags=["processes"],
    status_code=204,
    summary="Stop a process",
    description="SIGTERM to the process's command, SIGKILL after 10 seconds; its container is removed.",
    responses={**BAD_INPUT, **NOT_FOUND},
)
async def process_stop(app: str = AppPath, pid: str = PidPath, provider: Provider = Depends(provider_of)) -> Response:
    with log.measure("process.stop", app=app, pid=pid):
        await provider.processes.stop(app, pid)
    return Response(status_code=204)


EXEC_DESCRIPTION = """A websocket (subprotocol `v1.stream.rack`): runs `command` in the running process `pid`
(a new process in its container) attached to the stream.

Query: `command` (repeated: the argv; one word with shell syntax runs under `sh -c`), `tty` (true for a
terminal), `width` and `height` (the terminal's size, applied when the process starts; a TTY stream without
them waits up to a second for a first resize message).

Messages (binary, first byte the channel): client to rack 0 stdin, 4 resize `{"width": W, "height": H}`,
`[255, 0]` stdin EOF; rack to client 1 stdout, 2 stderr (pipes only; a TTY merges them on 1), then 3 status
`{"exit_code": N}` or `{"error": "..."}` as the last message. A client that disconnects ends the process (a
TTY is hung up, a pipe process is killed). An unknown, other app's or rack pid is a 404 on the handshake.

Over the rack's unix socket, a process may be had as a raw stream instead: `Connection: Upgrade`,
`Upgrade: v1.raw.rack`; once the process has started the answer is `101` and the connection carries Docker's
multiplexed frames (8-byte header: type 1 stdout or 2 stderr, three zero bytes, the length big-endian), then a
frame of type 128 with the status JSON; the client's bytes are stdin, its `shutdown(SHUT_WR)` stdin's EOF, its
close the end of the process. With `tty`, the client frames what it sends too (type 0 its keys, type 129 its
terminal's size); with `Rack-Stdio: pass` it is given the engine's connection itself (see `shared/rawstream.py`).
Asked elsewhere, it is a 400."""


TOO_MANY_SESSIONS = error_response(429, "Too many exec and run sessions open at once (RACK_PROCESSES_MAX_SESSIONS)")


@router.get(
    "/apps/{app}/processes/{pid}/exec",
    name="process_exec",
    tags=["processes"],
    summary="Run a command in a running process (websocket)",
    description=EXEC_DESCRIPTION,
    responses={
        **SOCKET,
        **BAD_INPUT,
        **NOT_FOUND,
        **error_response(409, "The process is not running"),
        **TOO_MANY_SESSIONS,
    },
)
async def process_exec(
    request: Request,
    app: str = AppPath,
    pid: str = PidPath,
    command: Annotated[list[str], Query(description="The command's argv, one parameter per word.")] = [],  # noqa: B006
    tty: Annotated[bool, Query(description="Run in a terminal.")] = False,
    width: Annotated[int | None, Query(ge=1, le=10_000, description="Terminal columns.")] = None,
    height: Annotated[int | None, Query(ge=1, le=10_000, description="Terminal rows.")] = None,
    provider: Provider = Depends(provider_of),
) -> Response:
    if not rawstream.wants_raw(request.headers):
        return upgrade_required(f"/apps/{app}/processes/{pid}/exec")
    extension = raw_extension(request.scope)
    argv = command_of(request)
    terminal = Terminal(tty=tty, width=width, height=height) if tty else Terminal()
    slots = sessions_of(request)
    slots.take()
    try:
        process = await provider.processes.exec(app, pid, argv)
        try:
            await process.start(terminal)
            log.log("exec.start", app=app, pid=pid, tty=str(tty).lower(), raw="true")
            client, pending = taken(extension)
        except BaseException:
            await asyncio.shield(process.close())
            raise
        passing = request.headers.get(rawstream.STDIO) == rawstream.PASS
        await raw.serve(client, pending, process, pass_stdio=passing, tty=tty)
    finally:
        slots.give()
    return Response(status_code=101)  # not written: the connection is the stream's


class ProcessRun(Model):
    """A one-off process of a process type, from the app's active release unless ``release`` names one."""

    command: list[str] | str = Field(
        default_factory=list,
        description="The argv, or one string run under `sh -c`; empty: the process type's own command.",
        examples=[["bin/migrate"], "echo $GREETING"],
    )
    environment: dict[str, str] = Field(default_factory=dict, description="On top of the release's environment.")
    release: str = Field("", description="A release of the app; its active release when empty.")
    timeout: int | None = Field(None, ge=1, le=30 * 86400, description="Seconds after which the process is stopped.")


def run_options(service: str, command: list[str] | str, environment: dict[str, str], release: str) -> ProcessRunOptions:
    check_env(environment)
    return ProcessRunOptions(service=service, command=shell_words(command), environment=environment, release=release)


@router.post(
    "/apps/{app}/services/{service}/processes",
    name="process_run",
    tags=["processes"],
    status_code=201,
    summary="Start a one-off process (detached)",
    description=(
        "A new container of the process type's image in the release, with the release's environment; listed "
        "by `GET /apps/{app}/processes` while it runs, removed when it ends. For an interactive one, connect "
        "a websocket to the same path."
    ),
    responses={**BAD_INPUT, **NOT_FOUND},
)
async def process_run(
    app: str = AppPath,
    service: str = ServicePath,
    body: Annotated[ProcessRun, Body()] = ProcessRun(),
    provider: Provider = Depends(provider_of),
) -> Process:
    options = run_options(service, body.command, body.environment, body.release)
    with log.measure("process.run", app=app, service=service, detach=True):
        return await provider.processes.run(app, options, time_limit=body.timeout)


@router.get(
    "/apps/{app}/services/{service}/processes",
    name="process_run_stream",
    tags=["processes"],
    summary="Run a one-off process attached to a stream (websocket)",
    description=(
        "A websocket (subprotocol `v1.stream.rack`): a new container of the process type's image in the "
        "release, with the release's environment, attached to the stream exactly as "
        "`/apps/{app}/processes/{pid}/exec` is (same query for `command`, `tty`, `width`, `height`, same "
        "messages, the exit code in the last status message); its container is removed when it ends. Also: "
        "`release`, `env` (repeated `KEY=VALUE`), `timeout` (seconds)."
    ),
    responses={**SOCKET, **BAD_INPUT, **NOT_FOUND, **TOO_MANY_SESSIONS},
)
async def process_run_stream(
    app: str = AppPath,
    service: str = ServicePath,
    command: Annotated[list[str], Query(description="The command's argv, one parameter per word.")] = [],  # noqa: B006
    tty: Annotated[bool, Query(description="Run in a terminal.")] = False,
    width: Annotated[int | None, Query(ge=1, le=10_000, description="Terminal columns.")] = None,
    height: Annotated[int | None, Query(ge=1, le=10_000, description="Terminal rows.")] = None,
    release: Annotated[str | None, Query(description="A release; the active one when empty.")] = None,
    env: Annotated[list[str], Query(description="KEY=VALUE, on top of the release's environment.")] = [],  # noqa: B006
    timeout: Annotated[  # noqa: ASYNC109 (a query parameter, documented here)
        int | None, Query(ge=1, description="Seconds after which the process is stopped.")
    ] = None,
) -> Response:
    return upgrade_required(f"/apps/{app}/services/{service}/processes")


# ---- websockets ---------------------------------------------------------------------------------------------


def _int(value: str | None, name: str, most: int = 10_000) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise BadRequest(f"{name}: must be a whole number from 1 to {most}, got {value!r}")
    return int(value)


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def terminal_of(websocket: WebSocket) -> Terminal:
    query = websocket.query_params
    return Terminal(
        tty=_bool(query.get("tty")), width=_int(query.get("width"), "width"), height=_int(query.get("height"), "height")
    )


def command_of(connection: HTTPConnection, required: bool = True) -> list[str]:
    command = shell_words(connection.query_params.getlist("command"))
    if required and not command:
        raise BadRequest("no command: give it as `command` query parameters, one per word")
    return command


async def _send_status(websocket: WebSocket, exit_code: int | None = None, error: str | None = None) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_bytes(stream.status(exit_code=exit_code, error=error))
        await websocket.close(code=1000)


class ClientGone(Exception):
    """The client disconnected: its process must end."""


async def _inbound(websocket: WebSocket, process: ProcessStream, first: list[bytes]) -> None:
    """Client to process: stdin, resize, stdin EOF; returns when the client disconnects."""
    for early in first:
        await _handle(process, early)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data: bytes | None = message.get("bytes")
        if data is None and message.get("text"):
            data = stream.encode(Channel.STDIN, str(message["text"]).encode())
        if data:
            await _handle(process, data)


async def _handle(process: ProcessStream, data: bytes) -> None:
    if data and data[0] == Channel.STDIN:
        if len(data) > 1:
            await process.write(memoryview(data)[1:])  # stdin as it came, uncopied
        return
    try:
        channel, payload = stream.decode(data)
    except stream.ProtocolError:
        return
    if channel == Channel.RESIZE:
        with contextlib.suppress(stream.ProtocolError):
            size = stream.parse_resize(payload)
            await process.resize(size.width, size.height)
    elif channel == Channel.CLOSE and payload[:1] == bytes((Channel.STDIN,)):
        await process.close_stdin()


CHANNEL_BYTES = {channel: bytes((channel,)) for channel in Channel}


async def _outbound(websocket: WebSocket, process: ProcessStream) -> int:
    """Process to client: its output until it ends, framed here as messages of ``v1.stream.rack`` (the
    channel byte, then the payload written as the provider handed it, uncopied), then its exit code."""
    send = sender(websocket)
    try:
        async for channel, data in process.output():
            await send(CHANNEL_BYTES[channel], data)
    except (WebSocketDisconnect, RuntimeError, OSError):
        raise ClientGone() from None
    return await process.wait()


async def _first_messages(websocket: WebSocket, terminal: Terminal) -> tuple[Terminal, list[bytes]]:
    """A TTY stream without its size in the query: its first message, when a resize, gives the size."""
    if not terminal.tty or terminal.size:
        return terminal, []
    try:
        message = await asyncio.wait_for(websocket.receive(), FIRST_RESIZE_WAIT)
    except TimeoutError:
        return terminal, []
    if message["type"] == "websocket.disconnect":
        raise ClientGone()
    data = message.get("bytes") or b""
    with contextlib.suppress(stream.ProtocolError):
        channel, payload = stream.decode(data)
        if channel == Channel.RESIZE:
            size = stream.parse_resize(payload)
            return terminal.model_copy(update={"width": size.width, "height": size.height}), []
    return terminal, [data] if data else []


async def attach(websocket: WebSocket, process: ProcessStream, time_limit: float | None = None) -> None:
    """Run an accepted stream's process to its end: start it, relay both ways, send its exit code. Whatever
    happens, the process is closed (ended when it still runs: a client that went away leaves nothing)."""
    outcome = "exit"
    try:
        terminal, first = await _first_messages(websocket, terminal_of(websocket))
        try:
            await process.start(terminal)
        except RackError as exc:
            outcome = "error"
            await _send_status(websocket, error=exc.message)
            return
        inbound = asyncio.create_task(_inbound(websocket, process, first))
        outbound = asyncio.create_task(_outbound(websocket, process))
        try:
            done, _ = await asyncio.wait({inbound, outbound}, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            inbound.cancel()
            if not outbound.done():
                outbound.cancel()
            await asyncio.gather(inbound, outbound, return_exceptions=True)
        if outbound in done and outbound.exception() is None:
            await _send_status(websocket, exit_code=outbound.result())
        elif outbound in done and not isinstance(outbound.exception(), ClientGone):
            outcome = "error"
            error = outbound.exception()
            message = error.message if isinstance(error, RackError) else f"internal error ({type(error).__name__})"
            await _send_status(websocket, error=message)
        elif not done:
            outcome = "timeout"
            await asyncio.shield(process.close())
            await _send_status(websocket, exit_code=124, error=f"the process timed out after {time_limit:g} s")
        else:
            outcome = "disconnect"
    except ClientGone:
        outcome = "disconnect"
    finally:
        await asyncio.shield(process.close())
        log.log("stream.end", outcome=outcome)
        await close(websocket)


@router.websocket("/apps/{app}/processes/metrics")
async def process_metrics_socket(websocket: WebSocket, app: str) -> None:
    provider = provider_of(websocket)
    query = websocket.query_params
    try:
        await provider.apps.get(app)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    await accept(websocket, {METRICS_INTERVAL: f"{provider.processes.metrics_interval:g}"})

    async def send() -> None:
        async for processes in provider.processes.metrics(app, query.get("service"), query.get("release")):
            payload = b"[" + b",".join(p.model_dump_json().encode() for p in processes) + b"]"
            await websocket.send_bytes(stream.encode(Channel.STDOUT, payload))

    async def receive() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    error = tasks[0].exception() if tasks[0] in done and not tasks[0].cancelled() else None
    if isinstance(error, RackError):
        await _send_status(websocket, error=error.message)
    else:
        await close(websocket)


def sessions_of(connection: HTTPConnection) -> Slots:
    """The service's cap on open sessions (a default one for an app made without it)."""
    slots = getattr(connection.app.state, "sessions", None)
    if not isinstance(slots, Slots):
        slots = connection.app.state.sessions = Slots("exec and run sessions", 100, "RACK_PROCESSES_MAX_SESSIONS")
    return slots


async def in_session_slot(websocket: WebSocket, session: Coroutine[Any, Any, None]) -> None:
    """Run ``session`` holding one of the service's session slots; past the cap the websocket is refused (429)
    and ``session`` never starts."""
    slots = sessions_of(websocket)
    try:
        slots.take()
    except RackError as exc:
        session.close()
        await refuse(websocket, exc)
        return
    try:
        await session
    finally:
        slots.give()


@router.websocket("/apps/{app}/processes/{pid}/exec")
async def process_exec_socket(websocket: WebSocket, app: str, pid: str) -> None:
    await in_session_slot(websocket, _exec_session(websocket, app, pid))


async def _exec_session(websocket: WebSocket, app: str, pid: str) -> None:
    provider = provider_of(websocket)
    try:
        terminal_of(websocket)
        process = await provider.processes.exec(app, pid, command_of(websocket))
    except RackError as exc:
        await refuse(websocket, exc)
        return
    log.log("exec.start", app=app, pid=pid, tty=_bool(websocket.query_params.get("tty")))
    try:
        await accept(websocket)
    except BaseException:
        await process.close()
        raise
    await attach(websocket, process)


@router.websocket("/apps/{app}/services/{service}/processes")
async def process_run_socket(websocket: WebSocket, app: str, service: str) -> None:
    await in_session_slot(websocket, _run_session(websocket, app, service))


async def _run_session(websocket: WebSocket, app: str, service: str) -> None:
    provider = provider_of(websocket)
    query = websocket.query_params
    try:
        terminal_of(websocket)
        environment = {}
        for pair in query.getlist("env"):
            key, value = parse_pair(pair)
            environment[key] = value
        time_limit = _int(query.get("timeout"), "timeout", most=30 * 86400)
        options = run_options(service, command_of(websocket, required=False), environment, query.get("release") or "")
        process = await provider.processes.run_interactive(app, options, time_limit=time_limit)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    log.log("run.start", app=app, service=service, tty=_bool(query.get("tty")))
    try:
        await accept(websocket)
    except BaseException:
        await process.close()
        raise
    await attach(websocket, process, time_limit=time_limit)
