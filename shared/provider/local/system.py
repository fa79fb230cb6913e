"""The rack's system record and what its engine can build from (``GET /system``, ``GET /system/images``)."""

from __future__ import annotations

import asyncio
import time

from shared import __version__
from shared.models import ImageStatus, System
from shared.provider.local.docker import Docker

PROBE_SECONDS = 5.0
"""How long a registry has to answer whether it has an image; past it, the image counts as not pullable."""
REMEMBER_SECONDS = 300.0
"""How long a registry's answer is kept: `convox init` asks once per app, a registry's reach changes rarely."""


class LocalSystem:
    def __init__(
        self, rack: str, docker: Docker, probe: float = PROBE_SECONDS, remember: float = REMEMBER_SECONDS
    ) -> None:
        self.rack = rack
        self.docker = docker
        self.probe = probe
        self.remember = remember
        self._pullable: dict[str, tuple[float, bool]] = {}

    async def get(self) -> System:
        return System(name=self.rack, version=__version__, provider="local", status="running")

    async def images(self, images: list[str]) -> list[ImageStatus]:
        return list(await asyncio.gather(*(self._image(image) for image in images)))

    async def _image(self, image: str) -> ImageStatus:
        if await self.docker.has_image(image):
            return ImageStatus(image=image, present=True, pullable=None)
        return ImageStatus(image=image, present=False, pullable=await self._registry_has(image))

    async def _registry_has(self, image: str) -> bool:
        now = time.monotonic()
        known = self._pullable.get(image)
        if known is not None and known[0] > now:
            return known[1]
        answer = await self.docker.registry_has(image, self.probe)
        if len(self._pullable) >= 256:  # names come from clients: the memory stays bounded
            self._pullable = {name: kept for name, kept in self._pullable.items() if kept[0] > now}
            if len(self._pullable) >= 256:
                self._pullable.clear()
        self._pullable[image] = (time.monotonic() + self.remember, answer)
        return answer
