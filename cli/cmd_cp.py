"""`convox cp LOCAL PID:/path` and `convox cp PID:/path LOCAL`: files and directories to and from a running
process, as a tar stream through `exec` (`tar -x` / `tar -c` in the process), never held in memory whole.

The destination is the path named: `cp ./data PID:/srv/data` makes /srv/data (a file or a directory, as
./data is); a destination ending in `/` (or an existing local directory) receives the source under its own
name, as `cp` does. What comes from the process is extracted with tarfile's ``data`` filter: no absolute
paths, no `..`, no links out of the destination, no device files.
"""

from __future__ import annotations

import contextlib
import posixpath
import queue
import tarfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import typer

from cli import completion
from cli.config import current_rack, resolve_app
from cli.errors import CliError

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]
CHUNK = 256 * 1024
QUEUE_CHUNKS = 16
"""Chunks in flight between the tar thread and the stream: what bounds the memory a copy uses."""
_EOF = b""


class _Sink:
    """A write-only file for tarfile in a thread: buffers to ``CHUNK``, hands chunks to a bounded queue."""

    def __init__(self, chunks: queue.Queue[bytes]) -> None:
        self.chunks = chunks
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= CHUNK:
            self.chunks.put(bytes(self.buffer[:CHUNK]))
            del self.buffer[:CHUNK]
        return len(data)

    def close(self) -> None:
        if self.buffer:
            self.chunks.put(bytes(self.buffer))
            self.buffer.clear()
        self.chunks.put(_EOF)


class _Source:
    """A read-only file for tarfile in a thread, fed chunk by chunk from a bounded queue."""

    def __init__(self, chunks: queue.Queue[bytes]) -> None:
        self.chunks = chunks
        self.buffer = b""
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        while not self.ended and (size < 0 or len(self.buffer) < size):
            chunk = self.chunks.get()
            if chunk == _EOF:
                self.ended = True
            self.buffer += chunk
        if size < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def split_remote(value: str) -> tuple[str, str] | None:
    """``PID:/path`` -> (pid, path); ``None`` for a local path."""
    pid, sep, path = value.partition(":")
    if not sep or not pid or "/" in pid or not all(c in "0123456789abcdef" for c in pid):
        return None
    if not path.startswith("/"):
        raise CliError(f"{value}: the path in the process must be absolute (PID:/path)")
    return pid, path


def _run(exchange: Coroutine[Any, Any, None]) -> None:
    """An exchange run to its end (asyncio is loaded here only: every other command's start goes without it)."""
    import asyncio

    asyncio.run(exchange)


async def _exchange(
    app: str, pid: str, command: list[str], send: queue.Queue[bytes] | None, receive: queue.Queue[bytes] | None
) -> None:
    """Run ``command`` in the process: stdin from ``send`` (then closed), stdout into ``receive``; an exit code
    that is not 0 is an error with what it wrote to stderr."""
    import asyncio

    from websockets.exceptions import ConnectionClosed

    from cli.stream import (
        CLOSE_CHANNEL,
        STATUS_CHANNEL,
        STDERR_CHANNEL,
        STDIN_CHANNEL,
        STDOUT_CHANNEL,
        check_pid,
        connect,
        encode,
        parse_status,
    )

    path = f"/apps/{quote(app)}/processes/{check_pid(pid)}/exec"
    errors = bytearray()
    status = None
    async with connect(current_rack(), path, [("command", word) for word in command]) as connection:

        async def sender() -> None:
            if send is not None:
                while chunk := await asyncio.to_thread(send.get):
                    await connection.send(encode(STDIN_CHANNEL, chunk))
            await connection.send(encode(CLOSE_CHANNEL, bytes((STDIN_CHANNEL,))))

        sending = asyncio.create_task(sender())
        try:
            async for message in connection:
                if isinstance(message, str):
                    message = message.encode()
                if not message:
                    continue
                if message[0] == STDOUT_CHANNEL and receive is not None:
                    await asyncio.to_thread(receive.put, bytes(message[1:]))
                elif message[0] == STDERR_CHANNEL:
                    errors += message[1:][:4096]
                elif message[0] == STATUS_CHANNEL:
                    status = parse_status(message[1:]) or status
        except ConnectionClosed:
            pass
        finally:
            if receive is not None:
                await asyncio.to_thread(receive.put, _EOF)
            if not sending.done():
                sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
    if status is None:
        raise CliError("the copy's stream ended without an exit status")
    if status.error:
        raise CliError(status.error)
    if status.exit_code:
        said = errors.decode("utf-8", "replace").strip().splitlines()
        raise CliError(f"{command[0]} in {pid} exited with code {status.exit_code}" + (f": {said[-1]}" if said else ""))


def _thread(target: Any, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def upload(app: str, local: Path, pid: str, remote: str) -> None:
    if not local.exists():
        raise CliError(f"no such file or directory: {local}")
    if remote.endswith("/"):
        parent, name = remote.rstrip("/") or "/", local.resolve().name
    else:
        parent, name = posixpath.dirname(remote) or "/", posixpath.basename(remote)
    chunks: queue.Queue[bytes] = queue.Queue(QUEUE_CHUNKS)

    def pack() -> None:
        sink = _Sink(chunks)
        try:
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                tar.add(str(local), arcname=name)
        finally:
            sink.close()

    thread, failures = _thread(pack)
    command = ["sh", "-c", 'mkdir -p "$1" && exec tar -xf - -C "$1"', "sh", parent]
    try:
        _run(_exchange(app, pid, command, chunks, None))
    finally:
        while thread.is_alive():  # let a packer blocked on a full queue finish
            with contextlib.suppress(queue.Empty):
                chunks.get(timeout=0.1)
        thread.join()
    if failures and isinstance(failures[0], OSError):
        raise CliError(f"cannot read {local}: {failures[0]}")
    if failures:
        raise failures[0]


def download(app: str, pid: str, remote: str, local: Path) -> None:
    source = remote.rstrip("/") or "/"
    parent, name = posixpath.dirname(source) or "/", posixpath.basename(source) or "."
    if local.is_dir():
        into, rename = local, name
    else:
        into, rename = local.parent if str(local.parent) else Path("."), local.name
    if not into.is_dir():
        raise CliError(f"no such directory: {into}")
    chunks: queue.Queue[bytes] = queue.Queue(QUEUE_CHUNKS)

    def unpack() -> None:
        stream: IO[bytes] = _Source(chunks)  # type: ignore[assignment]
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    head, _, rest = member.name.partition("/")
                    if head != name:
                        raise CliError(f"unexpected entry in the copy: {member.name!r}")
                    member.name = f"{rename}/{rest}" if rest else rename
                    tar.extract(member, into, filter="data")
        finally:
            while stream.read(CHUNK):  # the tar's padding, or the rest after a failure: the stream ends
                pass

    thread, failures = _thread(unpack)
    try:
        _run(_exchange(app, pid, ["tar", "-cf", "-", "-C", parent, name], None, chunks))
    finally:
        thread.join()
    if failures:
        failure = failures[0]
        if isinstance(failure, tarfile.FilterError | CliError):
            raise CliError(f"refused to extract: {failure}") from None
        if isinstance(failure, tarfile.TarError):
            raise CliError(f"the process sent no archive of {remote}") from None
        raise failure


def register(app: typer.Typer) -> None:
    @app.command("cp")
    def cp(
        source: Annotated[str, typer.Argument(help="LOCAL or PID:/path.")],
        destination: Annotated[str, typer.Argument(help="PID:/path or LOCAL.")],
        app_opt: AppOption = None,
    ) -> None:
        """Copy files or directories between this machine and a running process (PID:/path on one side)."""
        name = resolve_app(app_opt)
        remote_source, remote_destination = split_remote(source), split_remote(destination)
        if remote_source and remote_destination:
            raise CliError("copy between two processes is not supported: one side must be local")
        if remote_destination:
            upload(name, Path(source), *remote_destination)
        elif remote_source:
            download(name, *remote_source, Path(destination))
        else:
            raise CliError("one side must be a process: PID:/path")
