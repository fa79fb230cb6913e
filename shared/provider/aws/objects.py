"""Objects on AWS: ``apps/APP/objects/KEY`` in the rack's settings bucket (removed with the app's prefix).

A store streams to S3 through :meth:`State.upload` (one PUT up to ``multipart_threshold``, 8 MiB by default,
a multipart upload above), so a reader sees the old object or the new one, never a part.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from shared.archive import CHUNK
from shared.errors import NotFound
from shared.models import StoredObject
from shared.names import check_object_key
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.clients import translated
from shared.provider.aws.state import State
from shared.provider.contract import MAX_OBJECT_SIZE


def object_key(app: str, key: str) -> str:
    """The S3 key of ``app``'s object ``key`` (both already checked)."""
    return f"apps/{app}/objects/{key}"


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    async with body:
        while chunk := await body.read(CHUNK):
            yield chunk


class AwsObjects:
    def __init__(self, state: State, apps: AwsApps) -> None:
        self.state = state
        self.apps = apps

    async def s3_key(self, app: str, key: str) -> str:
        """The S3 key of the object (BadRequest for a bad key, NotFound for an unknown app)."""
        check_object_key(key)
        await self.apps.item(app)
        return object_key(app, key)

    async def store(
        self, app: str, key: str, data: AsyncIterable[bytes], max_size: int = MAX_OBJECT_SIZE
    ) -> StoredObject:
        s3_key = await self.s3_key(app, key)
        size = await self.state.upload(s3_key, data, max_size, what=f"object {key}")
        return StoredObject(app=app, key=key, size=size, url=f"s3://{self.state.bucket}/{s3_key}")

    async def fetch(self, app: str, key: str) -> AsyncIterator[bytes]:
        s3_key = await self.s3_key(app, key)
        s3 = await self.state.s3()
        with translated(f"no such object: {key}"):
            response = await s3.get_object(Bucket=self.state.bucket, Key=s3_key)
        return _chunks(response["Body"])

    async def exists(self, app: str, key: str) -> bool:
        s3_key = await self.s3_key(app, key)
        s3 = await self.state.s3()
        try:
            with translated(f"no such object: {key}"):
                await s3.head_object(Bucket=self.state.bucket, Key=s3_key)
        except NotFound:
            return False
        return True

    async def delete(self, app: str, key: str) -> None:
        if not await self.exists(app, key):  # S3 deletes what is not there without a word
            raise NotFound(f"no such object: {key}")
        s3 = await self.state.s3()
        with translated(f"cannot delete object {key}"):
            await s3.delete_object(Bucket=self.state.bucket, Key=object_key(app, key))
