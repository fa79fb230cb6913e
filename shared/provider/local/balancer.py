"""A TCP balancer on a host port, spreading connections over a process type's healthy containers.

Backends change with scale and roll-outs; connections already open are never cut by such a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter

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
        self.active: Counter[tuple[str, int]] = Counter()
        self._changed = asyncio.Event()

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

    async def drained(self, backend: tuple[str, int], within: float) -> bool:
        """Wait until no connection through this balancer is open to ``backend`` (at most ``within`` s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.active[backend] > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connect(self) -> tuple[tuple[str, int], asyncio.StreamReader, asyncio.StreamWriter] | None:
        backends = list(self.backends)
        if not backends:
            return None
        start = next(self._turn)
        for offset in range(len(backends)):
            backend = backends[(start + offset) % len(backends)]
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*backend), 3)
            except (OSError, TimeoutError):
                continue
            return backend, reader, writer
        return None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            backend, backend_reader, backend_writer = upstream
            self.active[backend] += 1
            try:
                await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
            finally:
                self.active[backend] -= 1
                self._changed.set()
                backend_writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await backend_writer.wait_closed()
        finally:
            client_writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await client_writer.wait_closed()
            self._connections.discard(task)
