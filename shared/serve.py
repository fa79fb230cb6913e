"""Run one of the rack's ASGI apps with uvicorn: internal services on a unix socket, the gateway on TCP."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from shared import logfmt
from shared.frames import FramingProtocol


def serve(
    app: ASGIApp,
    *,
    uds: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    ws: type[asyncio.Protocol] = FramingProtocol,
) -> None:
    logfmt.configure()
    sockets = [listen_private(uds)] if uds is not None else None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        log_level="warning",
        ws=ws,
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=60,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    server = uvicorn.Server(config)
    server.run(sockets=sockets)


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
