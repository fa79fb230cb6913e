"""A TCP balancer on a host port, spreading connections over a process type's healthy containers.

Backends change with scale and roll-outs; connections already open are never cut by such a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from shared.logfmt import Logger

log = Logger("balancer")
CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class Balancer:
    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.backends: list[tuple[str, int]] = []
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> int:
        """Listen (on the recorded port, or a free one when it is 0); returns the port."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.log("balancer.start", balancer=self.name, port=self.port)
        return self.port

    def set_backends(self, backends: list[tuple[str, int]]) -> None:
        if sorted(backends) != sorted(self.backends):
            log.log("balancer.backends", balancer=self.name, count=len(backends))
        self.backends = list(backends)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        backends = list(self.backends)
        if not backends:
            return None
        start = next(self._turn)
        for offset in range(len(backends)):
            host, port = backends[(start + offset) % len(backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), 3)
            except (OSError, TimeoutError):
                continue
        return None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            backend_reader, backend_writer = upstream
            try:
                await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
            finally:
                backend_writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await backend_writer.wait_closed()
        finally:
            client_writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await client_writer.wait_closed()
            self._connections.discard(task)
