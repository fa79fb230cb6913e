"""The client side of the rack's stream protocol (``v1.stream.rack``, see :mod:`shared.stream`): ``convox exec``,
interactive ``convox run`` and ``convox ps --watch``.

A stream is a websocket to the gateway with the rack password as HTTP Basic on the handshake. A refused
handshake is ``ERROR: <the rack's message>`` before the terminal is touched. Once accepted: a TTY when stdin
is a terminal (raw mode, the size in the query so it applies when the process starts, SIGWINCH -> resize),
pipes otherwise; stdin is relayed without blocking the loop and its EOF is a close of channel 0; the remote
exit code is the exit code; a stream that ends without a status message is an error. Pings keep an idle
stream open and notice a dead rack.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from cli import terminal
from cli.answers import expect_list
from cli.config import Rack, current_rack, resolve_app
from cli.errors import CliError
from shared.protocol import Process

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

SUBPROTOCOL = "v1.stream.rack"
STDIN_CHANNEL, STDOUT_CHANNEL, STDERR_CHANNEL, STATUS_CHANNEL, RESIZE_CHANNEL, CLOSE_CHANNEL = 0, 1, 2, 3, 4, 255
"""The protocol of :mod:`shared.stream`, spoken here without importing it: its pydantic models would add a
tenth of a second to every `convox exec` (tests check that both encode alike)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
PING_INTERVAL = 20.0
PING_TIMEOUT = 60.0
STDIN, STDOUT, STDERR = 0, 1, 2


METRICS_ENDED = "the metrics stream ended"


class StreamUnavailable(CliError):
    """The stream could not be had for now (the rack is down or restarting, a 5xx): worth another try."""


def socket_url(rack: Rack, path: str, query: Sequence[tuple[str, str]] | Mapping[str, str] = ()) -> str:
    scheme = "wss" if rack.host.startswith("https://") else "ws"
    base = "rack" if rack.uds else rack.host.split("://", 1)[1]
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    return f"{scheme}://{base}{path}" + (f"?{urlencode(pairs)}" if pairs else "")


def refusal(status: int, body: bytes, host: str) -> CliError:
    """The error for a refused handshake: the rack's own message (a 5xx is :class:`StreamUnavailable`)."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    if status == 401:
        return CliError(f"{message or 'invalid password'} for {host} (run `convox login {host}`)")
    text = str(message) if message else f"rack refused the stream: {status}"
    return StreamUnavailable(text) if status >= 500 else CliError(text)


@contextlib.asynccontextmanager
async def connect(
    rack: Rack, path: str, query: Sequence[tuple[str, str]] | Mapping[str, str] = ()
) -> AsyncIterator[ClientConnection]:
    """An open stream, or :class:`CliError` with the rack's own message (:class:`StreamUnavailable` when
    the rack cannot be reached or answers 5xx)."""
    import asyncio
    import ssl

    import websockets
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    from cli.streamconn import BufferedClientConnection

    token = base64.b64encode(f"convox:{rack.password}".encode()).decode()
    context = rack.ssl_context()
    options: dict[str, Any] = dict(
        subprotocols=[SUBPROTOCOL],
        additional_headers={"Authorization": f"Basic {token}"},
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_size=None,
        compression=None,
        open_timeout=30,
        close_timeout=5,
        max_queue=64,
        create_connection=BufferedClientConnection,
    )
    url = socket_url(rack, path, query)
    try:
        if rack.uds:  # the rack's own socket: its streams are handed straight to the services
            connection = await websockets.unix_connect(rack.uds, url, **options)
        else:
            connection = await websockets.connect(url, ssl=context, **options)
    except InvalidStatus as exc:
        raise refusal(exc.response.status_code, bytes(exc.response.body or b""), rack.host) from None
    except ssl.SSLCertVerificationError:
        raise CliError(
            f"the certificate of {rack.host} is not the one pinned at login: refusing to send the password"
            f" (if the rack's certificate really changed, run `convox login {rack.host}` again)"
        ) from None
    except (OSError, InvalidHandshake) as exc:
        raise StreamUnavailable(
            f"rack unreachable at {rack.host}: {exc.strerror if isinstance(exc, OSError) else exc}"
        ) from None
    except TimeoutError:
        raise StreamUnavailable(f"rack at {rack.host} did not answer in time") from None
    from shared.memory import keep_freed_memory

    keep_freed_memory()  # every stream may be bulk (exec, cp, services export and import)
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 5)


@dataclass(frozen=True)
class Status:
    exit_code: int | None = None
    error: str | None = None


def encode(channel: int, payload: bytes = b"") -> bytes:
    return bytes((channel,)) + payload


def resize_message(width: int, height: int) -> bytes:
    return encode(RESIZE_CHANNEL, json.dumps({"width": width, "height": height}).encode())


def parse_status(payload: bytes) -> Status | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    code, error = body.get("exit_code"), body.get("error")
    return Status(code if isinstance(code, int) else None, str(error) if error else None)


class Ended(Exception):
    """The stream ended; ``code`` is the CLI's exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


async def _send_stdin(connection: ClientConnection) -> None:
    reader = terminal.Input(STDIN)
    buf = bytearray(1 + reader.CHUNK)  # one buffer for every message: the channel byte, then what was read
    buf[0] = STDIN_CHANNEL
    view = memoryview(buf)
    while n := await reader.read_into(view[1:]):
        await connection.send(view[: 1 + n])  # framed (masked) into a new buffer before send returns
    await connection.send(encode(CLOSE_CHANNEL, bytes((STDIN_CHANNEL,))))


async def _receive(connection: ClientConnection) -> Status | None:
    """Relay output until the rack closes the stream; the status message, if one came."""
    from websockets.exceptions import ConnectionClosed

    status: Status | None = None
    try:
        async for message in connection:
            if isinstance(message, str):
                message = message.encode()
            if not message:
                continue
            channel = message[0]
            if channel == STDOUT_CHANNEL:
                terminal.write_all(STDOUT, memoryview(message)[1:])
            elif channel == STDERR_CHANNEL:
                terminal.write_all(STDERR, memoryview(message)[1:])
            elif channel == STATUS_CHANNEL:
                status = parse_status(message[1:]) or status
    except ConnectionClosed:
        pass
    except BrokenPipeError:
        raise Ended(141) from None
    return status


async def attach(rack: Rack, path: str, query: Sequence[tuple[str, str]]) -> int:
    """Run a process stream to its end; returns the remote exit code."""
    tty = terminal.is_terminal(STDIN)
    params = list(query)
    if tty:
        params.append(("tty", "true"))
        size = terminal.size(STDIN)
        if size:
            params += [("width", str(size[0])), ("height", str(size[1]))]
    import asyncio

    async with connect(rack, path, params) as connection:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[Any]] = set()

        def resized() -> None:
            now = terminal.size(STDIN)
            if now:
                task = asyncio.ensure_future(connection.send(resize_message(*now)))
                pending.add(task)
                task.add_done_callback(pending.discard)

        receiving = asyncio.current_task()
        stopped_by: list[int] = []

        def stop(signum: int) -> None:  # SIGTERM, SIGHUP: leave like Ctrl-C does, terminal restored
            stopped_by.append(signum)
            if receiving is not None:
                receiving.cancel()

        with terminal.raw(STDIN) if tty else contextlib.nullcontext():
            if tty:
                loop.add_signal_handler(signal.SIGWINCH, resized)
            for signum in STOP_SIGNALS:
                loop.add_signal_handler(signum, stop, signum)
            sender = asyncio.create_task(_send_stdin(connection))
            try:
                status = await _receive(connection)
            except asyncio.CancelledError:
                if not stopped_by:
                    raise
                raise Ended(128 + stopped_by[0]) from None
            finally:
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
                for signum in (*STOP_SIGNALS, *((signal.SIGWINCH,) if tty else ())):
                    loop.remove_signal_handler(signum)
                for task in pending:
                    task.cancel()
        close_code = connection.close_code
    if status is None:
        how = f"code {close_code}" if close_code else "the connection was lost"
        raise CliError(f"the stream ended without an exit status ({how})")
    if status.error:
        raise CliError(status.error, code=status.exit_code or 1)
    return status.exit_code or 0


def run(coroutine: Any) -> int:
    """``asyncio.run`` for a stream command; an :class:`Ended` becomes its code."""
    import asyncio

    try:
        return int(asyncio.run(coroutine))
    except Ended as ended:
        return ended.code


async def watch(rack: Rack, path: str, query: Sequence[tuple[str, str]]) -> AsyncIterator[list[Process]]:
    """The frames of a metrics stream, each the JSON list it carries, until the rack ends it."""
    from websockets.exceptions import ConnectionClosed

    async with connect(rack, path, query) as connection:
        try:
            async for message in connection:
                if not isinstance(message, bytes) or not message:
                    continue
                if message[0] == STDOUT_CHANNEL:
                    yield expect_list(Process, json.loads(message[1:]), path)
                elif message[0] == STATUS_CHANNEL:
                    status = parse_status(message[1:])
                    if status and status.error:
                        raise CliError(status.error)
        except ConnectionClosed:
            pass
    raise CliError(METRICS_ENDED)


# ---- the commands (shared by the Typer commands and the fast entry below) -----------------------------------

RACK_APP = "convox"


def check_pid(pid: str) -> str:
    """A pid is hex (a container id or its prefix); anything else is no process of any app."""
    if not pid or len(pid) > 64 or not all(ch in "0123456789abcdef" for ch in pid.lower()):
        raise CliError(f"no such process: {pid}")
    return pid.lower()


def environment(pairs: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--env: expected KEY=VALUE, got {pair!r}")
        found[key] = value
    return found


def run_path(app: str, service: str) -> str:
    return f"/apps/{quote(app)}/services/{quote(service)}/processes"


def exec_command(app: str, pid: str, command: Sequence[str]) -> int:
    """`convox exec`: the remote exit code."""
    if app == RACK_APP:  # the rack's own processes are nobody's to exec into
        raise CliError(f"no such process: {pid}")
    path = f"/apps/{quote(app)}/processes/{check_pid(pid)}/exec"
    rack, query = current_rack(), [("command", word) for word in command]
    if rack.uds:  # over the rack's own socket: a raw stream, on a terminal or with pipes
        from cli.rawexec import exec_raw, exec_terminal

        try:
            return exec_terminal(rack, path, query) if terminal.is_terminal(STDIN) else exec_raw(rack, path, query)
        except Ended as ended:
            return ended.code
    return run(attach(rack, path, query))


def run_command(
    app: str,
    service: str,
    command: Sequence[str],
    env: dict[str, str],
    release: str | None = None,
    time_limit: int | None = None,
) -> int:
    """`convox run` attached: the remote exit code."""
    query = [("command", word) for word in command]
    query += [("env", f"{key}={value}") for key, value in env.items()]
    if release:
        query.append(("release", release))
    if time_limit:
        query.append(("timeout", str(time_limit)))
    return run(attach(current_rack(), run_path(app, service), query))


def _last(options: dict[str, list[str]], name: str) -> str | None:
    values = options.get(name)
    return values[-1] if values else None


def _options(args: list[str], known: dict[str, str]) -> tuple[dict[str, list[str]], list[str]] | None:
    """Options before the first argument (``--name value``, ``-n value``, ``--name=value``), then the rest;
    ``None`` for anything else (help, a flag, an unknown option): Typer then handles the command line."""
    found: dict[str, list[str]] = {}
    while args and args[0].startswith("-") and args[0] != "-":
        option, eq, value = args.pop(0).partition("=")
        name = known.get(option)
        if name is None:
            return None
        if not eq:
            if not args:
                return None
            value = args.pop(0)
        found.setdefault(name, []).append(value)
    return found, args


def fast(argv: Sequence[str]) -> int | None:
    """`convox exec` and attached `convox run` without loading Typer, httpx and rich (a stream command's
    start is part of its latency); ``None`` hands the command line to Typer (help, --detach, usage errors)."""
    args = list(argv)
    if not args or args[0] not in ("exec", "run"):
        return None
    command = args.pop(0)
    app_options = {"--app": "app", "-a": "app"}
    try:
        if command == "exec":
            parsed = _options(args, app_options)
            if parsed is None or len(parsed[1]) < 2:
                return None
            options, rest = parsed
            return exec_command(resolve_app(_last(options, "app")), rest[0], rest[1:])
        run_options = {**app_options, "--release": "release", "--env": "env", "-e": "env", "--timeout": "timeout",
                       "-t": "timeout"}  # fmt: skip
        parsed = _options(args, run_options)
        if parsed is None or len(parsed[1]) < 2:
            return None
        options, rest = parsed
        timeout = _last(options, "timeout")
        if timeout is not None and (not timeout.isdigit() or int(timeout) < 1):
            return None
        return run_command(
            resolve_app(_last(options, "app")),
            rest[0],
            rest[1:],
            environment(options.get("env", [])),
            _last(options, "release"),
            int(timeout) if timeout else None,
        )
    except CliError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
