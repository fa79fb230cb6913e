"""Each app's TLS certificate, for the balancer listeners of its ``https``/``tls`` ports.

Made by the rack the first time one of the app's listeners needs it (self-signed ECDSA P-256, ten years,
for the balancer's host, ``localhost`` and the loopback addresses), kept in the data dir
(``certs/APP/cert.pem`` and ``key.pem``, mode 0600, the directory 0700) and reused across rack restarts and
roll-outs; it goes with the app. The balancer process reads the two files named in a listener's spec, so
a balancer started again after a crash or a restart serves the same certificate from the next put.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
from pathlib import Path

from pydantic import BaseModel

from shared.logfmt import Logger
from shared.names import under
from shared.tls import CERT_NAME, KEY_NAME, names_for, pem_fingerprint, self_signed

log = Logger("certificates")


class ListenerTLS(BaseModel):
    """The certificate a listener terminates TLS with: two files of the data dir, and its fingerprint (a
    listener whose certificate changed loads it again)."""

    certificate: str
    key: str
    fingerprint: str
    alpn: list[str] = []
    """``["http/1.1"]`` for an https port: a client never negotiates HTTP/2 with a plain HTTP/1 backend."""


def _make(directory: Path, common_name: str, host: str) -> None:
    """Write the app's certificate and key into a fresh directory, then rename it into place: a directory
    that exists holds both files (a second maker that lost the race drops its own)."""
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        cert_pem, key_pem = self_signed(common_name, *names_for(host))
        for name, data in ((KEY_NAME, key_pem), (CERT_NAME, cert_pem)):
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.rename(staging, directory)
        except OSError:
            if not (directory / CERT_NAME).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class AppCertificates:
    def __init__(self, data_dir: Path, host: str, rack: str) -> None:
        self.root = data_dir / "certs"
        self.host = host
        self.rack = rack
        self._locks: dict[str, asyncio.Lock] = {}
        self._known: dict[str, tuple[tuple[int, int], ListenerTLS]] = {}
        """What ``ensure`` found, per app, with its file's (inode, mtime): the balancers' refresh asks every few
        seconds; another process (the apps service deleting the app) may have removed or replaced it since."""

    def directory(self, app: str) -> Path:
        return under(self.root, app)

    async def ensure(self, app: str, alpn: list[str] | None = None) -> ListenerTLS:
        """The app's certificate, made now if it has none."""
        directory = self.directory(app)
        async with self._locks.setdefault(app, asyncio.Lock()):
            known = await self._cached(app)
            if known is None:
                if not await asyncio.to_thread((directory / CERT_NAME).exists):
                    await asyncio.to_thread(_make, directory, f"{app}.{self.rack}", self.host)
                    log.log("certificate.create", app=app)
                stamp = await asyncio.to_thread(_stamp, directory / CERT_NAME)
                pem = await asyncio.to_thread((directory / CERT_NAME).read_text)
                cert, key = str(directory / CERT_NAME), str(directory / KEY_NAME)
                known = ListenerTLS(certificate=cert, key=key, fingerprint=pem_fingerprint(pem))
                if stamp is not None:
                    self._known[app] = (stamp, known)
        return known.model_copy(update={"alpn": alpn or []})

    async def _cached(self, app: str) -> ListenerTLS | None:
        """What ``ensure`` found, while its file is still the one it read."""
        cached = self._known.get(app)
        if cached is None:
            return None
        if await asyncio.to_thread(_stamp, self.directory(app) / CERT_NAME) != cached[0]:
            del self._known[app]
            return None
        return cached[1]

    async def fingerprint(self, app: str) -> str:
        """``AB:CD:...`` (SHA-256) of the app's certificate, ``""`` while it has none."""
        known = await self._cached(app)
        if known is not None:
            return known.fingerprint
        try:
            pem = await asyncio.to_thread((self.directory(app) / CERT_NAME).read_text)
        except FileNotFoundError:
            return ""
        return pem_fingerprint(pem)

    async def forget(self, app: str) -> None:
        """The app is deleted (its listeners closed): its certificate goes too."""
        directory = self.directory(app)
        self._known.pop(app, None)
        self._locks.pop(app, None)
        if await asyncio.to_thread(directory.exists):
            await asyncio.to_thread(shutil.rmtree, directory, True)
            log.log("certificate.delete", app=app)


def _stamp(path: Path) -> tuple[int, int] | None:
    """The file's (inode, mtime in ns), ``None`` when it is not there."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns


def server_context(tls: ListenerTLS) -> ssl.SSLContext:
    """The server side of a listener's TLS (reads the two files: call it in a thread)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.key)
    if tls.alpn:
        with contextlib.suppress(NotImplementedError):
            context.set_alpn_protocols(tls.alpn)
    return context
