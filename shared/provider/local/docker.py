"""The only module of the local provider that speaks to aiodocker; vendor errors become rack errors here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable

LABEL_RACK = "convox.rack"
LABEL_APP = "convox.app"
LABEL_TYPE = "convox.type"
LABEL_RELEASE = "convox.release"
LABEL_ONEOFF = "convox.oneoff"


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn aiodocker and connection errors into the rack's errors, naming ``what`` was asked for."""
    try:
        yield
    except aiodocker.DockerError as exc:
        message = str(exc.message) if exc.message else f"docker error {exc.status}"
        if exc.status == 404:
            raise NotFound(f"{what}: not found") from None
        if exc.status == 409:
            raise Conflict(f"{what}: {message}") from None
        if exc.status == 400:
            raise BadRequest(f"{what}: {message}") from None
        raise RackError(f"{what}: {message}", status=502) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Unavailable(f"docker engine unreachable ({type(exc).__name__})") from None


class Docker:
    """One aiodocker client per provider, opened in its lifespan."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._client: aiodocker.Docker | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            self._client = aiodocker.Docker(url=self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def containers(self, labels: dict[str, str], all: bool = False) -> list[dict[str, Any]]:
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        async with translated("containers"):
            found = await self.client.containers.list(all=all, filters=filters)
        return [dict(c._container) for c in found]

    async def inspect(self, container_id: str) -> dict[str, Any]:
        async with translated(f"process {container_id}"):
            container = await self.client.containers.get(container_id)
        return dict(container._container)

    async def run(self, config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        async with translated(f"image {config.get('Image', '')}"):
            container = await self.client.containers.create(config, name=name)
        async with translated("container"):
            try:
                await container.start()
            except BaseException:
                await container.delete(force=True)
                raise
            await container.show()
        return dict(container._container)

    async def remove(self, container_id: str) -> None:
        async with translated(f"process {container_id}"):
            await self.client.containers.container(container_id).delete(force=True, v=True)
