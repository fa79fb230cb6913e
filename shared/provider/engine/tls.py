"""Mutual TLS to a container instance's Docker Engine, with half-close.

asyncio's own TLS transport cannot half-close (``can_write_eof()`` is False, and a peer's close_notify
closes it), but a hijacked exec needs exactly that: stdin EOF is a shutdown of the write side while the
process's output goes on. The Docker CLI does it over TLS by sending close_notify and reading on; so does
:class:`TlsTransport`, TLS done here over a plain TCP connection with :class:`ssl.MemoryBIO`:
``write_eof()`` sends close_notify, and decrypted data keeps flowing into the application's buffered
protocol (straight into its buffer, ``SSLObject.read(n, buffer)``) until the engine's own close_notify.

:func:`client_context` makes the rack's client context from PEM text: it trusts only the rack's CA (made
at install) and presents the rack's client certificate. Host names are not checked (an instance's address
is not known when its certificate is made); the chain must be the rack's CA's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable
from typing import Any


def client_context(ca: str, certificate: str, key: str) -> ssl.SSLContext:
    """A client context from PEM text (blocking, brief file work: call it in a thread). The key is written
    to a private temporary file only for OpenSSL to load it, and removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca)
    with tempfile.TemporaryDirectory(prefix="rack-tls-") as folder:
        path = os.path.join(folder, "client.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.strip() + "\n" + certificate.strip() + "\n")
        context.load_cert_chain(path)
    return context


class _Wire(asyncio.Protocol):
    """The TCP connection's protocol: every event goes to the TLS transport above it."""

    def __init__(self, tls: TlsTransport) -> None:
        self.tls = tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tls._made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.tls._received(data)

    def eof_received(self) -> bool:
        self.tls._raw_eof()
        return True  # the engine has finished sending; we may still be writing

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls._lost(exc)

    def pause_writing(self) -> None:
        self.tls.app.pause_writing()

    def resume_writing(self) -> None:
        self.tls.app.resume_writing()


class TlsTransport(asyncio.Transport):
    """TLS over a TCP transport, for one buffered protocol, with a real ``write_eof()``."""

    def __init__(self, app: asyncio.BufferedProtocol, context: ssl.SSLContext) -> None:
        super().__init__()
        self.app = app
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing)
        self.raw: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connected = False
        self.reading_paused = False
        self.app_eof = False
        self.wrote_eof = False

    # ---- the wire's events ----------------------------------------------------------------------------

    def _made(self, raw: asyncio.Transport) -> None:
        self.raw = raw
        self._step_handshake()

    def _received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.handshake.done():
            self._step_handshake()
        if self.connected:
            self._deliver()

    def _raw_eof(self) -> None:
        self.incoming.write_eof()
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionResetError("the engine closed the connection in the handshake"))
        elif self.connected:
            self._deliver()

    def _lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("the engine closed the connection"))
        if self.connected:
            self.connected = False
            self.app.connection_lost(exc)

    def _step_handshake(self) -> None:
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            if self.raw is not None:
                self.raw.close()
            return
        else:
            if not self.handshake.done():
                self.handshake.set_result(None)
        self._flush()

    def _deliver(self) -> None:
        """Decrypt what has come, into the application's buffer, until nothing more is readable or it pauses."""
        while not self.reading_paused and self.connected:
            buf = memoryview(self.app.get_buffer(-1))
            error: ssl.SSLError | None = None
            count = 0
            try:
                if buf.nbytes:
                    got = self.ssl.read(buf.nbytes, buf)
                    count = got if isinstance(got, int) else len(got)
            except ssl.SSLWantReadError:
                count = -1
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                count = 0
            except ssl.SSLError as exc:  # an alert (a refused certificate) or a broken record
                error, count = exc, -1
            finally:
                del buf  # no export of the application's buffer outlives the read (it may be resized)
            if error is not None:
                self._flush()
                if self.raw is not None:
                    self.raw.close()
                self._lost(error)
                return
            if count < 0:
                break
            if count == 0:
                if not self.app_eof:
                    self.app_eof = True
                    self.app.eof_received()
                break
            self.app.buffer_updated(count)
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and self.raw is not None and not self.raw.is_closing():
            self.raw.write(data)

    # ---- the transport the application sees ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.wrote_eof:
            raise RuntimeError("cannot write after write_eof()")
        with contextlib.suppress(ssl.SSLWantReadError):
            self.ssl.write(data)
        self._flush()

    def write_eof(self) -> None:
        """Send close_notify; what the engine sends is still read."""
        if self.wrote_eof:
            return
        self.wrote_eof = True
        with contextlib.suppress(ssl.SSLError):
            self.ssl.unwrap()
        self._flush()

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.raw is None or self.raw.is_closing()

    def close(self) -> None:
        if self.raw is not None and not self.raw.is_closing():
            self.write_eof()
            self.raw.close()

    def abort(self) -> None:
        if self.raw is not None:
            self.raw.abort()

    def pause_reading(self) -> None:
        self.reading_paused = True
        if self.raw is not None:
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.raw is not None and not self.raw.is_closing():
            self.raw.resume_reading()
        self._deliver()

    def is_reading(self) -> bool:
        return not self.reading_paused

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() if self.raw is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self.ssl.getpeercert()
        if name == "ssl_object":
            return self.ssl
        return self.raw.get_extra_info(name, default) if self.raw is not None else default


async def open_tls(
    factory: Callable[[], asyncio.BufferedProtocol], host: str, port: int, context: ssl.SSLContext
) -> tuple[asyncio.Transport, Any]:
    """Connect, shake hands (the engine's certificate checked against the context's CA), then hand the
    connection to a new protocol from ``factory``."""
    app = factory()
    tls = TlsTransport(app, context)
    loop = asyncio.get_running_loop()
    raw, _ = await loop.create_connection(lambda: _Wire(tls), host, port)
    try:
        await tls.handshake
    except BaseException:
        raw.close()
        raise
    tls.connected = True
    app.connection_made(tls)
    tls._deliver()  # what came with the end of the handshake
    return tls, app
