"""The only module of the local provider that speaks to aiodocker; vendor errors become rack errors here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
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

    async def stop(self, container_id: str, grace: int = 10) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds, then remove."""
        async with translated(f"process {container_id}"):
            container = self.client.containers.container(container_id)
            try:
                await container.stop(t=grace)
            finally:
                await container.delete(force=True, v=True)

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        """The rack's bridge network, where each process type resolves by ``TYPE.APP``."""
        async with translated(f"network {name}"):
            try:
                await self.client.networks.get(name)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                try:
                    await self.client.networks.create(
                        {"Name": name, "Driver": "bridge", "Labels": labels, "CheckDuplicate": True}
                    )
                except aiodocker.DockerError as race:
                    if race.status != 409:
                        raise

    async def build(
        self,
        context: Path,
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: dict[str, str] | None = None,
        nocache: bool = False,
        labels: dict[str, str] | None = None,
    ) -> AsyncIterator[str]:
        """Build the tar at ``context`` (uncompressed) into ``tag``, yielding docker's output as text while it
        comes. A failing step raises :class:`BadRequest` with docker's message; so does a build whose output
        ends without an image (aiodocker ends the stream silently when the connection drops)."""
        handle = await asyncio.to_thread(open, context, "rb")
        built = False
        try:
            async with translated(f"build {tag}"):
                try:
                    async for item in self.client.images.build(
                        fileobj=handle,
                        encoding="identity",
                        tag=tag,
                        path_dockerfile=dockerfile,
                        buildargs=buildargs or None,
                        nocache=nocache,
                        rm=True,
                        forcerm=True,
                        labels=labels or None,
                        stream=True,
                    ):
                        aux = item.get("aux")
                        if isinstance(aux, dict) and aux.get("ID"):
                            built = True
                        text = build_output(item)
                        if text:
                            yield text
                except aiodocker.DockerStreamError as exc:
                    raise BadRequest(str(exc.message).strip() or "the build failed") from None
                if not built:
                    try:
                        await self.client.images.inspect(tag)
                    except aiodocker.DockerError:
                        raise BadRequest("the build ended without an image") from None
        finally:
            await asyncio.to_thread(handle.close)


def build_output(item: dict[str, Any]) -> str:
    """One line of docker's JSON build stream as the text a terminal would show."""
    if isinstance(item.get("stream"), str):
        return str(item["stream"])
    if isinstance(item.get("status"), str):
        parts = [str(item.get("id") or ""), item["status"], str(item.get("progress") or "")]
        return " ".join(p for p in parts if p).rstrip() + "\n"
    return ""
