"""A test double of a Docker Engine that hangs or goes away: a unix socket proxy in front of the real one.

``DockerProxyDouble(path).mode`` is ``"pass"`` (forwards both ways), ``"stall"`` (accepts, then forwards
nothing either way, in new and open connections alike: a hung engine) or ``"refuse"`` (nothing listens:
connecting is refused and open connections are cut: an engine that is down). It runs its own event loop in
a thread, so a rack in another process can be pointed at it with ``DOCKER_HOST=unix://PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Literal

Mode = Literal["pass", "stall", "refuse"]
ENGINE = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")


class DockerProxyDouble:
    def __init__(self, path: Path, mode: Mode = "pass", engine: str = ENGINE) -> None:
        self.path = path
        self.engine = engine
        self._mode: Mode = mode
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        asyncio.run_coroutine_threadsafe(self._switch(mode), self._loop).result(10)

    def __enter__(self) -> DockerProxyDouble:
        self._thread.start()
        self.mode = self._mode
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode = "refuse"
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _switch(self, mode: Mode) -> None:
        self._mode = mode
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
        elif self._server is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server = await asyncio.start_unix_server(self._accept, self.path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._flowing.wait()  # a stalled engine accepts, then says nothing
            engine_reader, engine_writer = await asyncio.open_unix_connection(self.engine)
            self._writers.add(engine_writer)
            try:
                await asyncio.gather(self._pipe(reader, engine_writer), self._pipe(engine_reader, writer))
            finally:
                self._writers.discard(engine_writer)
                engine_writer.close()
        except (OSError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(65536):
                await self._flowing.wait()
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
