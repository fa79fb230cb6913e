"""Objects on the local provider: one file per object under ``DATA/objects/APP/``.

A key's ``/`` becomes ``%`` in its file name (no key has a ``%``), so that ``a`` and ``a/b`` can both be
objects, as on S3, and no directories are left behind by a delete. Every path is built through
:func:`shared.names.under` (it must stay under the app's directory, links followed). A store is received
into ``DATA/objects/.partial/`` (no app name starts with a dot) in 1 MiB writes in a thread, then renamed
into place: a reader sees the old file whole or the new one whole.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import IO

from shared.archive import CHUNK, receive
from shared.errors import BadRequest, NotFound
from shared.models import StoredObject
from shared.names import OutsideRoot, check_object_key, under
from shared.provider.contract import MAX_OBJECT_SIZE, AppsAPI

PARTIAL = ".partial"


def file_name(key: str) -> str:
    return key.replace("/", "%")


def object_url(app: str, key: str) -> str:
    return f"object://{app}/{key}"


async def _chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def _open(path: Path) -> IO[bytes] | None:
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return True


class LocalObjects:
    def __init__(self, apps: AppsAPI, data_dir: Path) -> None:
        self.apps = apps
        self.root = data_dir / "objects"

    def _app_dir(self, app: str) -> Path:
        """Blocking (resolves links): run in a thread."""
        try:
            return under(self.root, app)
        except OutsideRoot as exc:
            raise BadRequest(f"invalid app name: {app!r} ({exc})") from None

    def _path(self, app: str, key: str) -> Path:
        """Blocking (resolves links): run in a thread."""
        try:
            return under(self._app_dir(app), file_name(key))
        except OutsideRoot as exc:
            raise BadRequest(f"invalid object key: {key!r} ({exc})") from None

    async def path(self, app: str, key: str) -> Path:
        """Where the object ``key`` of ``app`` is (or would be) kept; BadRequest, NotFound as the contract says."""
        check_object_key(key)
        await self.apps.get(app)
        return await asyncio.to_thread(self._path, app, key)

    async def store(
        self, app: str, key: str, data: AsyncIterable[bytes], max_size: int = MAX_OBJECT_SIZE
    ) -> StoredObject:
        path = await self.path(app, key)
        partial = self.root / PARTIAL
        await asyncio.to_thread(partial.mkdir, parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
        temp = partial / f"{secrets.token_hex(12)}"
        size = await receive(data, temp, max_size, what=f"object {key}")
        try:
            await asyncio.to_thread(os.replace, temp, path)
        except BaseException:
            await asyncio.to_thread(temp.unlink, True)
            raise
        return StoredObject(app=app, key=key, size=size, url=object_url(app, key))

    async def fetch(self, app: str, key: str) -> AsyncIterator[bytes]:
        # Opened now: a delete or a replacing store after this does not change what the iterator reads.
        handle = await asyncio.to_thread(_open, await self.path(app, key))
        if handle is None:
            raise NotFound(f"no such object: {key}")
        return _chunks(handle)

    async def exists(self, app: str, key: str) -> bool:
        path = await self.path(app, key)
        return await asyncio.to_thread(path.is_file)

    async def delete(self, app: str, key: str) -> None:
        if not await asyncio.to_thread(_unlink, await self.path(app, key)):
            raise NotFound(f"no such object: {key}")

    async def forget(self, app: str) -> None:
        """A deleted app's objects go with it."""
        directory = await asyncio.to_thread(self._app_dir, app)
        await asyncio.to_thread(shutil.rmtree, directory, True)
