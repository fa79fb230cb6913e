"""Test double of a container instance's Docker Engine listening with ``--tlsverify`` on 2376: an asyncio TLS
server that requires a client certificate signed by the rack's CA, presents the instances' engine
certificate, and forwards each connection to this host's Docker Engine (its unix socket).

What it simulates: dockerd's TLS listener (Go's crypto/tls). Like it, it supports half-close: a client's
close_notify ends the engine-bound direction (a shutdown of the unix socket's write side: stdin EOF) while
the engine's output still flows back, and the engine's end of output becomes the front's close_notify. TLS is
done here over :class:`ssl.MemoryBIO` (asyncio's TLS transport closes on a peer's close_notify); this module
shares no code with the product's TLS client. ``refused`` counts the handshakes it refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from pathlib import Path

CHUNK = 1 << 16


def docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"


def server_context(ca: str, certificate: str, key: str, folder: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED  # dockerd --tlsverify: no client certificate, no connection
    context.load_verify_locations(cadata=ca)
    pem = folder / "server.pem"
    pem.write_text(key.strip() + "\n" + certificate.strip() + "\n")
    pem.chmod(0o600)
    context.load_cert_chain(str(pem))
    return context


class TlsFront:
    def __init__(self, ca: str, certificate: str, key: str, socket_path: str | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tls-front-"))
        self.context = server_context(ca, certificate, key, self.folder)
        self.socket_path = socket_path or docker_socket()
        self.refused = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TlsFront:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        for task in list(self.connections):
            with contextlib.suppress(BaseException):
                await task
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self._relay(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(BaseException):  # closed for good before the loop may stop
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)

        def flush() -> None:
            data = outgoing.read()
            if data and not writer.is_closing():
                writer.write(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                data = await reader.read(CHUNK)
                if not data:
                    return
                incoming.write(data)
            except ssl.SSLError:
                flush()  # the alert: the client learns why
                self.refused += 1
                return
        flush()
        self.accepted += 1
        engine_reader, engine_writer = await asyncio.open_unix_connection(self.socket_path)

        async def to_engine() -> None:
            while True:
                try:
                    data = tls.read(CHUNK)
                except ssl.SSLWantReadError:
                    flush()
                    chunk = await reader.read(CHUNK)
                    if not chunk:
                        break
                    incoming.write(chunk)
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
                if not data:
                    break  # close_notify: the client's stdin EOF
                engine_writer.write(data)
                await engine_writer.drain()
            if engine_writer.can_write_eof():
                engine_writer.write_eof()

        async def to_client() -> None:
            while chunk := await engine_reader.read(CHUNK):
                tls.write(chunk)
                flush()
                await writer.drain()
            with contextlib.suppress(ssl.SSLError):
                tls.unwrap()
            flush()
            await writer.drain()

        up = asyncio.create_task(to_engine())
        try:
            await to_client()
            up.cancel()
        finally:
            with contextlib.suppress(BaseException):
                await up
            engine_writer.close()
            with contextlib.suppress(BaseException):
                await engine_writer.wait_closed()
