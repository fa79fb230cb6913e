"""Scoped, expiring access tokens (Convox's deploy keys): a JWT (HS256) with a role (``read`` or ``write``) and
an expiry, signed with a key kept in the data dir (``token.key``, mode 0600, made at first start). A token is
given wherever the password is (HTTP Basic, any user name, e.g. ``jwt``) or as ``Authorization: Bearer``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["read", "write"]
ROLES: tuple[Role, ...] = ("read", "write")
KEY_NAME = "token.key"
MAX_DURATION = 366 * 24 * 3600
DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
HEADER = {"alg": "HS256", "typ": "JWT"}


class TokenError(Exception):
    """A token that does not verify or has expired; its message says which."""


@dataclass(frozen=True)
class Claims:
    role: Role
    expires: int
    id: str


def ensure_key(data_dir: Path) -> bytes:
    """The signing key, generated (written atomically, 0600) if the data dir has none."""
    path = data_dir / KEY_NAME
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{KEY_NAME}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def parse_duration(text: str) -> int:
    """``1h``, ``30m``, ``7d``, ``1h30m``, ``90s`` (or plain seconds) -> seconds, 1 s to 366 days."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        match = DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError(f"invalid duration: {text!r} (use e.g. 30m, 1h, 7d)")
        d, h, m, s = (int(g) if g else 0 for g in match.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + s
    if not 0 < seconds <= MAX_DURATION:
        raise ValueError(f"duration out of range: {text!r} (1s to 366d)")
    return seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, role: Role, seconds: int, now: float | None = None) -> tuple[str, Claims]:
    issued = int(now if now is not None else time.time())
    claims = Claims(role=role, expires=issued + seconds, id=secrets.token_hex(8))
    payload = {"role": role, "iat": issued, "exp": claims.expires, "jti": claims.id}
    signing = (
        _b64(json.dumps(HEADER, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}", claims


def looks_like_token(text: bytes) -> bool:
    return text.count(b".") == 2 and text.startswith(b"eyJ")


def verify(key: bytes, token: str, now: float | None = None) -> Claims:
    try:
        head, body, signature = token.split(".")
        expected = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(signature)):
            raise TokenError("invalid token")
        if json.loads(_unb64(head)) != HEADER:
            raise TokenError("invalid token")
        payload = json.loads(_unb64(body))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise TokenError("invalid token") from None
    role, expires, token_id = payload.get("role"), payload.get("exp"), payload.get("jti")
    if role not in ROLES or not isinstance(expires, int) or not isinstance(token_id, str):
        raise TokenError("invalid token")
    if expires <= (now if now is not None else time.time()):
        raise TokenError("token expired")
    return Claims(role=role, expires=expires, id=token_id)
