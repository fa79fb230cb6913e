"""Run one of the rack's ASGI apps with uvicorn: internal services on a unix socket, the gateway on TCP."""

from __future__ import annotations

import os
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from shared import logfmt


def serve(
    app: ASGIApp,
    *,
    uds: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> None:
    logfmt.configure()
    if uds is not None:
        uds.parent.mkdir(parents=True, exist_ok=True)
        if uds.exists():
            uds.unlink()
    config = uvicorn.Config(
        app,
        uds=str(uds) if uds else None,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=60,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    server = uvicorn.Server(config)
    if uds is not None:
        os.umask(0o077)  # the socket is the gateway's alone
    server.run()
