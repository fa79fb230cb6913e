"""`convox services export NAME > dump` and `convox services import NAME < dump`: a service's logical dump
(postgres `pg_dump` SQL, mysql `mysqldump` SQL, redis RDB) streamed through the rack, with a progress bar on
stderr.

Both are websockets to ``/services/NAME/export`` and ``/services/NAME/import`` (:mod:`services.provisioner.
transfers`). The dump is never held whole: a chunk is read (or written) in a thread while the stream waits,
so the rack sends only as fast as this end writes, and this end reads only as fast as the rack takes. An
export ends with the rack's status: without one, or with an error, the dump is incomplete (an export to
``--file`` then leaves the file as it was; to stdout, the command fails). An import's status says whether
the service loaded it: the tool's error when it refused it (`psql exited with code 3: ...`), at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from cli.config import Rack
from cli.errors import CliError

CHUNK = 256 * 1024


def _progress(label: str, total: int | None) -> tuple[Any, Callable[[int], None]]:
    """A rich progress bar on stderr (bytes, speed) and the function that advances it."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from cli.building import speed_column

    progress = Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn(binary_units=True),
        speed_column(),
        console=Console(stderr=True, highlight=False),
    )
    task = progress.add_task("transfer", total=total)

    def advance(size: int) -> None:
        progress.advance(task, size)

    return progress, advance


def _ended(status: Any, what: str) -> None:
    if status is None:
        raise CliError(f"the {what} stream ended without a status: the {what} is incomplete")
    if status.error:
        raise CliError(status.error)
    if status.exit_code:
        raise CliError(f"the {what} failed with code {status.exit_code}")


async def _receive(rack: Rack, name: str, write: Callable[[memoryview], None], advance: Callable[[int], None]) -> None:
    from websockets.exceptions import ConnectionClosed

    from cli.stream import STATUS_CHANNEL, STDOUT_CHANNEL, connect, parse_status

    status = None
    async with connect(rack, f"/services/{quote(name)}/export") as connection:
        try:
            async for message in connection:
                if not isinstance(message, bytes) or not message:
                    continue
                if message[0] == STDOUT_CHANNEL:
                    await asyncio.to_thread(write, memoryview(message)[1:])
                    advance(len(message) - 1)
                elif message[0] == STATUS_CHANNEL:
                    status = parse_status(message[1:]) or status
        except ConnectionClosed:
            pass
    _ended(status, "export")


async def _send(rack: Rack, name: str, read: Callable[[int], bytes], advance: Callable[[int], None]) -> None:
    from websockets.exceptions import ConnectionClosed

    from cli.stream import CLOSE_CHANNEL, STATUS_CHANNEL, STDIN_CHANNEL, connect, encode, parse_status

    status = None
    unreadable: list[OSError] = []
    async with connect(rack, f"/services/{quote(name)}/import") as connection:

        async def sender() -> None:
            try:
                while chunk := await asyncio.to_thread(read, CHUNK):
                    await connection.send(encode(STDIN_CHANNEL, chunk))
                    advance(len(chunk))
            except OSError as exc:  # the dump cannot be read: the rack must not load what it got of it
                unreadable.append(exc)
                await connection.close()
                return
            await connection.send(encode(CLOSE_CHANNEL, bytes((STDIN_CHANNEL,))))

        sending = asyncio.create_task(sender())
        try:
            async for message in connection:
                if isinstance(message, bytes) and message[:1] == bytes((STATUS_CHANNEL,)):
                    status = parse_status(message[1:]) or status
        except ConnectionClosed:
            pass
        finally:
            if not sending.done():  # the rack answered before it had everything: it refused the dump
                sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sending
    if unreadable:
        raise CliError(f"cannot read the dump: {unreadable[0].strerror or unreadable[0]}")
    _ended(status, "import")


def _write_fd(fd: int) -> Callable[[memoryview], None]:
    from cli.terminal import write_all

    def write(data: memoryview) -> None:
        try:
            write_all(fd, data)
        except BrokenPipeError:
            raise CliError("stdout was closed before the end of the dump") from None

    return write


def export(rack: Rack, name: str, file: Path | None) -> None:
    """The dump to ``file`` (replaced only when the dump is whole) or to stdout."""
    if file is None and sys.stdout.isatty():
        raise CliError("a dump is not for a terminal: redirect stdout (`> dump`) or give --file")
    progress, advance = _progress(f"Exporting {name}", None)
    if file is None:
        with progress:
            asyncio.run(_receive(rack, name, _write_fd(sys.stdout.fileno()), advance))
        return
    directory = file.parent if str(file.parent) else Path(".")
    if not directory.is_dir():
        raise CliError(f"no such directory: {directory}")
    fd, partial = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".partial", dir=directory)
    try:
        with progress:
            asyncio.run(_receive(rack, name, _write_fd(fd), advance))
        os.close(fd)
        fd = -1
        os.replace(partial, file)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _size(handle: IO[bytes]) -> int | None:
    """The dump's size when it is a regular file (`< dump` is one too), for a bar with an end."""
    info = os.fstat(handle.fileno())
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def import_(rack: Rack, name: str, file: Path | None) -> None:
    """Load the dump from ``file`` or stdin into the service."""
    if file is None and sys.stdin.isatty():
        raise CliError("give the dump on stdin (`< dump`) or with --file")
    try:
        handle: IO[bytes] = file.open("rb") if file is not None else sys.stdin.buffer
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}") from None
    try:
        progress, advance = _progress(f"Importing {name}", _size(handle))
        with progress:
            asyncio.run(_send(rack, name, handle.read, advance))
    finally:
        if file is not None:
            handle.close()
