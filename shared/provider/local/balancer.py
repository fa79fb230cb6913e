"""One listener of a balancer: a public host port forwarding TCP connections to a set of backends.

A listener is the unit of a balancer: ``(host, port) -> [(ip, container_port), ...]``. A process type with
several public ports has one listener per port; the listener of an ``https`` or ``tls`` port terminates
TLS with the app's certificate (:mod:`shared.provider.local.certificates`) and forwards the plain bytes.
Backends change with scale and roll-outs; connections already open are never cut by such a change.
Listeners live in the balancer process (:mod:`shared.provider.local.balancerd`), which outlives the rack's
services; the rack drives it through :mod:`shared.provider.local.balancers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections import Counter

from pydantic import BaseModel, Field

from shared.logfmt import Logger
from shared.provider.local.certificates import ListenerTLS, server_context

log = Logger("balancer")
CHUNK = 256 * 1024
CONNECT_SECONDS = 3.0
HANDSHAKE_SECONDS = 10.0


class ListenerSpec(BaseModel):
    """What one listener should be: where it listens and where it forwards."""

    name: str = Field(description="Unique among the balancer's listeners, e.g. 'web.myapp:80'.")
    host: str
    port: int = Field(0, ge=0, le=65535, description="The public port; 0 takes a free one (then kept).")
    backends: list[tuple[str, int]] = Field(default_factory=list, description="(ip, container port) pairs.")
    tls: ListenerTLS | None = Field(None, description="Terminate TLS with this certificate; None: plain TCP.")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS has no half-close here: the end of what the backend sends ends the connection
            writer.close()
    except (ConnectionError, OSError):
        writer.close()


class Listener:
    """A TCP listener spreading connections round-robin over its backends (the next one when one refuses)."""

    def __init__(self, name: str, host: str, port: int, tls: ListenerTLS | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.tls = tls
        self._context: ssl.SSLContext | None = None
        self.backends: list[tuple[str, int]] = []
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.active: Counter[tuple[str, int]] = Counter()
        self._changed = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def spec(self) -> ListenerSpec:
        return ListenerSpec(name=self.name, host=self.host, port=self.port, backends=list(self.backends), tls=self.tls)

    async def start(self) -> int:
        """Listen (on the given port, or a free one when it is 0); returns the port."""
        if self.tls is not None:
            self._context = await asyncio.to_thread(server_context, self.tls)
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self.port,
            reuse_address=True,
            ssl=self._context,
            ssl_handshake_timeout=HANDSHAKE_SECONDS if self._context is not None else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.log("listener.start", listener=self.name, port=self.port, tls=self.tls is not None)
        return self.port

    @property
    def tls_loaded(self) -> bool:
        return self._context is not None

    async def set_certificate(self, tls: ListenerTLS) -> None:
        """Serve new connections with another certificate (those open keep theirs)."""
        assert self._context is not None
        await asyncio.to_thread(self._context.load_cert_chain, tls.certificate, tls.key)
        self.tls = tls
        log.log("listener.certificate", listener=self.name, fingerprint=tls.fingerprint)

    def set_backends(self, backends: list[tuple[str, int]]) -> None:
        if sorted(backends) != sorted(self.backends):
            log.log("listener.backends", listener=self.name, count=len(backends))
        self.backends = list(backends)

    async def drained(self, ip: str, within: float) -> bool:
        """Wait until no connection through this listener is open to a backend at ``ip`` (at most ``within``
        seconds); False when some still are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while any(count > 0 for (host, _), count in self.active.items() if host == ip):
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
            log.log("listener.close", listener=self.name, port=self.port)
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
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*backend), CONNECT_SECONDS)
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
        except asyncio.CancelledError:
            pass  # the listener closes (its app went): this connection ends with it
        finally:
            client_writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await client_writer.wait_closed()
            self._connections.discard(task)
