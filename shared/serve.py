"""Run one of the rack's ASGI apps with uvicorn: internal services on a unix socket (and a hand-off socket
beside it, :mod:`shared.handoff`), the gateway on TCP and on the rack's own unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from shared import handoff, logfmt
from shared.frames import FramingProtocol
from shared.rawhttp import RawUpgradeProtocol


class Server(uvicorn.Server):
    """uvicorn's server with two more kinds of listener: plain sockets beside its own (the gateway's unix
    socket, never TLS) and a hand-off socket whose connections it serves as if they had been accepted."""

    def __init__(self, config: uvicorn.Config, plain: list[socket.socket], handoffs: socket.socket | None) -> None:
        super().__init__(config)
        self.plain = plain
        self.handoffs = handoffs
        self.receiving: asyncio.Task[None] | None = None

    def protocol(self) -> asyncio.Protocol:
        """A new connection's protocol, as uvicorn makes it for the connections it accepts."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        for sock in self.plain:
            self.servers.append(await loop.create_server(self.protocol, sock=sock, backlog=self.config.backlog))
        if self.handoffs is not None:
            self.receiving = asyncio.create_task(handoff.serve(self.handoffs, self.take))

    async def take(self, sock: socket.socket, request: bytes) -> asyncio.Future[int] | None:
        loop = asyncio.get_running_loop()
        protocol = self.protocol()
        answered: asyncio.Future[int] | None = None
        if isinstance(protocol, RawUpgradeProtocol):
            answered = loop.create_future()
            protocol.answer_to(answered)
        await loop.connect_accepted_socket(lambda: _Handed(protocol, request), sock)
        return answered

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.receiving is not None:
            self.receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.receiving
        if self.handoffs is not None:
            self.handoffs.close()
        await super().shutdown(sockets)


class _Handed(asyncio.Protocol):
    """Gives a handed connection to its real protocol, with the request the gateway read first."""

    def __init__(self, protocol: asyncio.Protocol, request: bytes) -> None:
        self.protocol = protocol
        self.request = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self.protocol)
        self.protocol.connection_made(transport)
        self.protocol.data_received(self.request)


def serve(
    app: ASGIApp,
    *,
    uds: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    ws: type[asyncio.Protocol] = FramingProtocol,
    plain_uds: Path | None = None,
) -> None:
    """Serve ``app`` on ``uds`` (with a hand-off socket beside it) or on ``host:port`` (TLS with a
    certificate), and on ``plain_uds`` too, never with TLS."""
    logfmt.configure()
    sockets = [listen_private(uds)] if uds is not None else None
    handoffs = listen_private(handoff.handoff_path(uds)) if uds is not None else None
    plain = [listen_private(plain_uds)] if plain_uds is not None else []
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        log_level="warning",
        http=RawUpgradeProtocol,
        ws=ws,
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=60,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    Server(config, plain, handoffs).run(sockets=sockets)


def listen_private(path: Path) -> socket.socket:
    """A unix socket at ``path`` (replacing a stale one) that only this user can connect to: mode 0600 from
    the start (uvicorn would make its own 0666), in a 0700 directory."""
    os.umask(0o077)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(2048)
    return sock
