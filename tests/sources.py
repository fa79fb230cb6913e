"""Build sources for provider tests: a directory packed as the builds service packs an upload, and stored as
the app's object (what ``BuildsAPI.create`` starts from)."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from shared.archive import pack
from shared.provider.contract import ObjectsAPI


def packed(directory: Path) -> bytes:
    out = io.BytesIO()
    pack(directory, out)
    return out.getvalue()


async def chunks_of(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def stored_source(objects: ObjectsAPI, app: str, directory: Path) -> str:
    """``directory`` as a .tgz stored as the object ``sources/RANDOM.tgz`` of ``app``: its key."""
    key = f"sources/{secrets.token_hex(8)}.tgz"
    data = await asyncio.to_thread(packed, directory)
    await objects.store(app, key, chunks_of(data))
    return key
