"""The rack password on every route but ``GET /check``: HTTP Basic with any user name, like Convox."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.http import deny

PUBLIC_PATHS = frozenset({"/check"})
CHALLENGE = [(b"www-authenticate", b'Basic realm="convox"')]


def password_from(header: bytes) -> bytes | None:
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(b":")
    return password if sep else None


class RequirePassword:
    def __init__(self, app: ASGIApp, password: str) -> None:
        self.app = app
        self.password = password.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] in PUBLIC_PATHS and scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        given = password_from(header) if header else None
        if given is None or not hmac.compare_digest(given, self.password):
            message = "invalid password" if header else "password required"
            await deny(scope, receive, send, 401, message, CHALLENGE)
            return
        await self.app(scope, receive, send)
