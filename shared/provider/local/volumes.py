"""Volumes of process types on the local provider: a named volume per app, process type and manifest volume
(``volumes: [/data]``), shared by every process of that type on the host: those of the formation and the
one-offs (``convox run``, timers' runs) alike. Kept across releases, roll-outs and rack restarts; removed
with the app."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from shared.errors import Conflict, NotFound
from shared.manifest import Volume
from shared.provider.local.docker import LABEL_APP, LABEL_RACK, LABEL_TYPE, Docker

FORGET_ATTEMPTS = 8
"""How many times a volume in use is tried again at the app's deletion (about 6 s of waits in all)."""


class Volumes:
    def __init__(self, docker: Docker, rack: str) -> None:
        self.docker = docker
        self.rack = rack

    def name(self, app: str, service: str, volume: str) -> str:
        return f"{self.rack}-{app}-{service}-{volume}"

    async def mounts(self, app: str, service: str, volumes: list[Volume]) -> list[dict[str, Any]]:
        """The ``HostConfig.Mounts`` of a process of ``service``: each volume made when it is not there yet."""
        mounts = []
        for volume in volumes:
            name = self.name(app, service, volume.name)
            await self.docker.volume_create(name, {LABEL_RACK: self.rack, LABEL_APP: app, LABEL_TYPE: service})
            mounts.append({"Type": "volume", "Source": name, "Target": volume.path})
        return mounts

    async def forget(self, app: str) -> None:
        """Remove the app's volumes (the app is being deleted, its containers removed). A volume still in use
        is held by a container whose removal was under way (a one-off removing itself once its log was read)
        or that began as the deletion went on (a timer's run): those go too, and the removal is tried again."""
        for name in await self.docker.volumes({LABEL_RACK: self.rack, LABEL_APP: app}):
            for attempt in range(FORGET_ATTEMPTS):
                try:
                    await self.docker.volume_remove(name)
                    break
                except Conflict:
                    if attempt == FORGET_ATTEMPTS - 1:
                        raise
                for user in await self.docker.volume_users(name):
                    with contextlib.suppress(NotFound, Conflict):  # gone already, or its removal under way
                        await self.docker.remove(user)
                await asyncio.sleep(0.05 * 2**attempt)
