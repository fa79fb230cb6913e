"""Who may do what, on every route but ``GET /check``.

- **Same origin only** for what a browser could be tricked into: a websocket handshake or a state-changing
  request (anything but GET/HEAD/OPTIONS) that carries an ``Origin`` other than the rack's own is refused
  (403) before any credential is looked at, so a page on another site cannot drive a browser that logged in
  at ``/docs``. Clients that are not browsers send no ``Origin`` and are not concerned.
- **Credentials**: HTTP Basic with the rack password (any user name, like Convox), or with a scoped token
  (:mod:`services.gateway.tokens`, e.g. user ``jwt``), or ``Authorization: Bearer <token>``. None or a wrong
  one is 401, an expired token is 401 ``token expired``.
- **Builders' reports** (``POST /apps/APP/builds/ID/report`` with an ``X-Build-Token`` header) carry no
  rack credential: the builder task was given a token for its one build, which the builds service checks
  against that build (401 otherwise). The gateway passes them on with the role ``build``; the same route
  without that header is authenticated here as any other.
- **Roles**: the password and ``write`` tokens may do everything (but only the password makes tokens); a
  ``read`` token only reads: any other method, and every websocket but the log, build-log and metrics
  follows (exec and run are writes), is 403.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.tokens import TokenError, looks_like_token, verify
from shared.http import deny

PUBLIC_PATHS = frozenset({"/check"})
BUILD_REPORT = re.compile(r"/apps/[^/]+/builds/[^/]+/report")
"""Authenticated by the builds service with the build's own token, not here."""
BUILDER = "build"
CHALLENGE = [(b"www-authenticate", b'Basic realm="convox"')]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_STREAMS = [
    re.compile(p)
    for p in (
        r"/apps/[^/]+/logs",
        r"/apps/[^/]+/processes/[^/]+/logs",
        r"/apps/[^/]+/processes/metrics",
        r"/apps/[^/]+/builds/[^/]+/logs",
        r"/system/logs",
    )
]
"""The websockets a read token may open: following logs, build logs and process metrics; nothing that runs."""
ADMIN = "admin"
ACCESS_KEY = "rack.access"
"""Where the request's role (``admin``, ``write`` or ``read``) is left in ``scope["state"]``."""


def password_from(header: bytes) -> bytes | None:
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() == b"bearer":
        return encoded.strip() or None
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(b":")
    return password if sep else None


DEFAULT_PORTS = {"http": "80", "https": "443"}


def _authority(scheme: str, netloc: str) -> str:
    """``host:port`` with the scheme's default port made explicit."""
    has_port = netloc.rpartition(":")[2].isdigit() and (not netloc.startswith("[") or "]:" in netloc)
    return netloc if has_port else f"{netloc}:{DEFAULT_PORTS.get(scheme, '')}"


def cross_site(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """The foreign ``Origin`` of a request that could change something, or ``None`` when it may proceed. The
    rack's own origin is the host and port the request was sent to (its ``Host``); the scheme is not compared,
    so that a TLS-terminating proxy in front of a rack still counts as the rack."""
    if scope["type"] == "http" and scope["method"] in SAFE_METHODS:
        return None
    origin = headers.get(b"origin")
    if origin is None:
        return None
    given = origin.decode("latin-1").strip().lower().rstrip("/")
    scheme, sep, netloc = given.partition("://")
    if not sep or not netloc or "/" in netloc:
        return given  # "null" (a sandboxed page, a file) or nonsense: never the rack
    raw_scheme = str(scope.get("scheme") or "http")
    served = {"ws": "http", "wss": "https"}.get(raw_scheme, raw_scheme)
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    return None if host and _authority(scheme, netloc) == _authority(served, host) else given


def allowed_for_read(scope: Scope) -> bool:
    if scope["type"] == "websocket":
        return any(p.fullmatch(scope["path"]) for p in READ_STREAMS)
    return bool(scope["method"] in SAFE_METHODS)


class RequireAccess:
    def __init__(self, app: ASGIApp, password: str, token_key: bytes) -> None:
        self.app = app
        self.password = password.encode()
        self.token_key = token_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        foreign = cross_site(scope, headers)
        if foreign is not None:
            await deny(scope, receive, send, 403, f"cross-site request refused: origin {foreign} is not this rack")
            return
        if scope["type"] == "http" and scope["path"] in PUBLIC_PATHS and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and BUILD_REPORT.fullmatch(scope["path"])
            and b"x-build-token" in headers
        ):
            scope.setdefault("state", {})[ACCESS_KEY] = BUILDER
            await self.app(scope, receive, send)
            return
        header = headers.get(b"authorization")
        given = password_from(header) if header else None
        role = None
        message = "invalid password" if header else "password required"
        if given is not None and hmac.compare_digest(given, self.password):
            role = ADMIN
        elif given is not None and looks_like_token(given):
            try:
                role = verify(self.token_key, given.decode("ascii")).role
            except (TokenError, UnicodeDecodeError) as exc:
                message = str(exc) if isinstance(exc, TokenError) else "invalid token"
        if role is None:
            await deny(scope, receive, send, 401, message, CHALLENGE)
            return
        if role == "read" and not allowed_for_read(scope):
            what = "WS" if scope["type"] == "websocket" else scope["method"]
            await deny(scope, receive, send, 403, f"a read token cannot change the rack ({what} {scope['path']})")
            return
        scope.setdefault("state", {})[ACCESS_KEY] = role
        await self.app(scope, receive, send)
