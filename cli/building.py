"""A build as `convox build` and `convox deploy` do it (:func:`build_and_wait`): pack the directory (honouring
``.dockerignore``) in a thread, upload it with a progress bar, follow the build's output live over the websocket
and return the finished build, or raise ``CliError("build failed: ...")``.

Nothing here imports Typer, and rich only once the upload's progress bar is shown: `convox deploy` runs it
without loading the command tree (:mod:`cli.deploying`).
"""

from __future__ import annotations

import json
import posixpath
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cli import output
from cli.client import Client
from cli.config import Rack
from cli.errors import CliError, RackUnavailable
from shared.protocol import App, Build

UPLOAD_CHUNK = 256 * 1024
UPLOAD_TIMEOUT = 900.0
"""Seconds an upload's connection may wait on the rack (a large source over a slow link)."""


# ---- packing -----------------------------------------------------------------------------------


def always_sent(directory: Path, manifest: str) -> set[str]:
    """What goes up even when ``.dockerignore`` excludes it: the manifest, each Dockerfile it names,
    ``.dockerignore`` itself (as Docker always sends the Dockerfile and ``.dockerignore``)."""
    from shared.manifest import MANIFEST_FILES, find_manifest, parse_manifest

    keep = {".dockerignore", "Dockerfile", *([manifest] if manifest else MANIFEST_FILES)}
    try:
        path = find_manifest(directory, manifest or None)
        name = path.relative_to(directory).as_posix()
        keep.add(name)
        parsed = parse_manifest(path.read_text(encoding="utf-8", errors="replace"), name)
    except Exception:  # the rack reports a bad manifest with its file and key; send what is there
        return keep
    for service in parsed.services.values():
        if service.build is not None:
            keep.add(posixpath.normpath(posixpath.join(service.build.path, service.build.manifest)))
            keep.add(posixpath.normpath(posixpath.join(service.build.path, ".dockerignore")))
    return keep


def manifest_warnings(build: Build) -> list[str]:
    """The keys of the manifest the rack does not act on (``convox.yml: services.web.domain is not supported
    by this rack``), as the rack parsed it for this build."""
    try:
        parsed = json.loads(build["manifest"] or "{}")
    except ValueError:
        return []
    warnings = parsed.get("warnings") if isinstance(parsed, dict) else None
    return [str(warning) for warning in warnings] if isinstance(warnings, list) else []


def pack_source(directory: Path, archive: Path, manifest: str) -> int:
    """The directory as a .tgz at ``archive``; returns the number of entries."""
    from shared.archive import UnsafeArchive, pack
    from shared.dockerignore import leaves_out

    # When the .dockerignore (if any) leaves nothing out, nothing needs keeping: no manifest to parse (its
    # models cost about 0.1-0.2 s of CPU, a good part of a small app's `convox deploy`).
    ignores = (directory / ".dockerignore").is_file() and leaves_out(directory)
    keep = always_sent(directory, manifest) if ignores else set()
    try:
        with archive.open("wb") as handle:
            return pack(directory, handle, compress=True, keep=keep, check_links=True)
    except UnsafeArchive as exc:
        raise CliError(f"{exc.member}: {exc.reason}; the rack refuses it (leave it out with .dockerignore)") from None


def in_thread(target: Any, *args: Any) -> Any:
    """Run ``target(*args)`` in a worker thread, waiting here (Ctrl-C still interrupts the wait)."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(target(*args))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, name="convox-pack", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if failure:
        raise failure[0]
    return result[0]


# ---- uploading ---------------------------------------------------------------------------------


def speed_column() -> Any:
    """Rich's transfer speed, but also for an upload of one or two chunks (rich needs several samples and
    shows ``?``): then the average since the start."""
    from rich.filesize import decimal
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class AverageSpeedColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None and task.elapsed and task.completed:
                speed = task.completed / task.elapsed
            if speed is None:
                return Text("?", style="progress.data.speed")
            return Text(f"{decimal(int(speed))}/s", style="progress.data.speed")

    return AverageSpeedColumn()


def decimal(size: float) -> str:
    """A size as rich writes it (``decimal``): 812 bytes, 12.3 kB, 4.5 MB."""
    if size < 1000:
        return f"{int(size)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}"


def upload(c: Client, app: str, archive: Path, params: dict[str, str]) -> Build:
    """POST the archive as the body, streamed from disk, with a progress bar (bytes sent / total) on stderr,
    or where stderr is no terminal, one line with the size and speed once it is sent (rich, whose import is
    some 50 ms of a deploy, draws nothing live there anyway)."""
    size = archive.stat().st_size
    headers = {"content-type": "application/gzip", "content-length": str(size)}
    if not sys.stderr.isatty():

        def plain() -> Iterator[bytes]:
            with archive.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK):
                    yield chunk

        started = time.monotonic()
        with output.step("Uploading source"):
            build = c.post(f"/apps/{app}/builds", Build, params=params, content=plain(), headers=headers,
                           timeout=UPLOAD_TIMEOUT)  # fmt: skip
            speed = size / max(time.monotonic() - started, 1e-6)
            print(f"{decimal(size)} at {decimal(speed).replace(' bytes', ' B')}/s", end=" ", file=sys.stderr)
        return build
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("Uploading source"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        speed_column(),
        console=Console(stderr=True, highlight=False),
    )
    task = progress.add_task("upload", total=size)

    def body() -> Iterator[bytes]:
        with archive.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK):
                yield chunk
                progress.advance(task, len(chunk))

    with progress:
        build = c.post(
            f"/apps/{app}/builds",
            Build,
            params=params,
            content=body(),
            headers=headers,
            timeout=UPLOAD_TIMEOUT,
        )
    return build


# ---- following -------------------------------------------------------------------------------


CONNECT_FOR = 30.0
"""Seconds a build's log stream is asked for again while the rack cannot give it (a service restarting)."""


def follow_logs(rack: Rack, app: str, build_id: str, out: BinaryIO) -> tuple[int | None, str | None]:
    """Write the build's output to ``out`` as it comes; returns its status (exit code, error).
    A stream that ends without a status is an error. Over the rack's own socket it is a raw stream
    (:mod:`cli.rawexec`: no asyncio, no websocket library to load), elsewhere the websocket."""
    if rack.uds:
        return _follow_raw(rack, app, build_id, out)
    import asyncio
    import time

    from websockets.asyncio.client import ClientConnection
    from websockets.exceptions import ConnectionClosed

    from cli import stream

    hint = f"convox builds logs {build_id}"

    async def relay(socket: ClientConnection) -> tuple[int | None, str | None] | None:
        try:
            async for message in socket:
                if isinstance(message, str):
                    continue
                channel, payload = channel_of(message), message[1:]
                if channel in (stream.STDOUT_CHANNEL, stream.STDERR_CHANNEL):
                    await asyncio.to_thread(_write, out, payload)
                elif channel == stream.STATUS_CHANNEL:
                    status = stream.parse_status(payload)
                    if status is None:
                        raise CliError("build log stream: malformed status message")
                    return status.exit_code, status.error
        except ConnectionClosed:
            pass
        return None

    async def follow() -> tuple[int | None, str | None] | None:
        # A rack that cannot give the stream for now (its builds service restarting: a 5xx) is asked again
        # for a while; nothing was shown yet, so nothing is shown twice.
        deadline = time.monotonic() + CONNECT_FOR
        while True:
            try:
                async with stream.connect(rack, f"/apps/{app}/builds/{build_id}/logs") as socket:
                    return await relay(socket)
            except stream.StreamUnavailable:
                if time.monotonic() > deadline:
                    raise StreamEnded(f"the build's log stream is unavailable; the build may go on ({hint})") from None
                await asyncio.sleep(0.5)

    ended = asyncio.run(follow())
    if ended is not None:
        return ended
    raise StreamEnded(f"the build log stream ended without a status; the build may go on ({hint})")


def _follow_raw(rack: Rack, app: str, build_id: str, out: BinaryIO) -> tuple[int | None, str | None]:
    from cli import rawexec, stream

    hint = f"convox builds logs {build_id}"
    deadline = time.monotonic() + CONNECT_FOR
    while True:  # asked again for a while, as the websocket is (see follow_logs)
        try:
            sock, first, _ = rawexec.open_stream(rack, f"/apps/{app}/builds/{build_id}/logs", [])
            break
        except stream.StreamUnavailable:
            if time.monotonic() > deadline:
                raise StreamEnded(f"the build's log stream is unavailable; the build may go on ({hint})") from None
            time.sleep(0.5)
    out.flush()
    with sock:
        payload = rawexec.receive(sock, first, out=out.fileno(), err=out.fileno())
    if payload is None:
        raise StreamEnded(f"the build log stream ended without a status; the build may go on ({hint})")
    status = stream.parse_status(payload)
    if status is None:
        raise CliError("build log stream: malformed status message")
    return status.exit_code, status.error


CHANNELS = frozenset((0, 1, 2, 3, 4, 255))
"""The channels of the stream protocol (:class:`shared.stream.Channel`, whose pydantic models this module does
not load: a tenth of a second of the CLI's CPU while the build runs on the rack)."""


def channel_of(message: bytes) -> int:
    """The channel of a message of the build's log stream; one that breaks the protocol is an error."""
    if not message:
        raise CliError("build log stream: empty message")
    if message[0] not in CHANNELS:
        raise CliError(f"build log stream: unknown channel {message[0]}")
    return message[0]


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


class StreamEnded(CliError):
    """The log stream closed before its status message (the rack or its builds service restarted)."""


def settled(c: Client, app: str, build_id: str, within: float = 30.0) -> Build | None:
    """The build once it is complete or failed, polling for ``within`` seconds; None if it is not by then."""
    import time

    deadline = time.monotonic() + within
    while True:
        try:
            build: Build | None = c.get(f"/apps/{app}/builds/{build_id}", Build)
        except CliError:  # the builds service may be restarting
            build = None
        if build is not None and build["status"] in ("complete", "failed"):
            return build
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def build_and_wait(
    c: Client,
    app: str,
    directory: Path,
    *,
    description: str = "",
    manifest: str = "",
    no_cache: bool = False,
    out: BinaryIO | None = None,
) -> Build:
    """Pack, upload, build ``directory`` as a build of ``app`` and follow its output to ``out`` (stdout);
    returns the complete build (with its ``release``), or raises ``CliError("build failed: ...")``."""
    directory = directory.expanduser()
    if not directory.is_dir():
        raise CliError(f"no such directory: {directory}")
    c.get(f"/apps/{app}", App)  # an unknown app fails before anything is packed
    params = {"description": description, "manifest": manifest, "no_cache": "true" if no_cache else "false"}
    with tempfile.TemporaryDirectory(prefix="convox-build-") as scratch:
        archive = Path(scratch) / "source.tgz"
        with output.step("Packaging source"):
            in_thread(pack_source, directory, archive, manifest)
        build = upload(c, app, archive, params)
    build_id = build["id"]
    for warning in manifest_warnings(build):
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    print(f"Starting build {build_id}... OK", file=sys.stderr, flush=True)
    try:
        exit_code, error = follow_logs(c.rack, app, build_id, out or sys.stdout.buffer)
        try:
            final = c.get(f"/apps/{app}/builds/{build_id}", Build)
        except RackUnavailable:  # the builds service restarting as its stream ended: its verdict comes soon
            raise StreamEnded("the build's service is restarting") from None
    except StreamEnded:
        found = settled(c, app, build_id)
        if found is None:
            raise
        final, exit_code, error = found, None, None
    if error is not None or exit_code not in (0, None) or final["status"] != "complete":
        raise CliError(f"build failed: {error or final['error'] or final['status']}")
    print(f"Build: {build_id}", flush=True)
    print(f"Release: {final['release']}", flush=True)
    return final


