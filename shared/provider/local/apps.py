"""Apps on the local provider: rows in SQLite; deleting one removes its containers first."""

from __future__ import annotations

from datetime import UTC, datetime

import aiosqlite

from shared.errors import BadRequest, Conflict, NotFound
from shared.models import APP_NAME_RE, RACK_APP, App, invalid_app_name
from shared.provider.local.docker import LABEL_APP, LABEL_RACK, Docker
from shared.provider.local.state import State


def _app(row: aiosqlite.Row) -> App:
    return App(name=row["name"], status=row["status"], release=row["release"], balancer="")


def check_name(name: str) -> None:
    if not APP_NAME_RE.match(name):
        raise BadRequest(invalid_app_name(name))


class LocalApps:
    def __init__(self, state: State, docker: Docker, rack: str) -> None:
        self.state = state
        self.docker = docker
        self.rack = rack

    async def create(self, name: str) -> App:
        check_name(name)
        if name == RACK_APP:
            raise Conflict(f"app name is reserved for the rack: {name}")
        created = datetime.now(UTC).isoformat()
        try:
            await self.state.execute(
                "INSERT INTO apps (name, status, release, created) VALUES (?, 'running', '', ?)", (name, created)
            )
        except aiosqlite.IntegrityError:
            raise Conflict(f"app already exists: {name}") from None
        return await self.get(name)

    async def get(self, name: str) -> App:
        check_name(name)
        row = await self.state.fetch_one("SELECT * FROM apps WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no such app: {name}")
        return _app(row)

    async def list(self) -> list[App]:
        return [_app(row) for row in await self.state.fetch_all("SELECT * FROM apps ORDER BY name")]

    async def delete(self, name: str) -> None:
        await self.get(name)
        for container in await self.docker.containers({LABEL_RACK: self.rack, LABEL_APP: name}, all=True):
            await self.docker.remove(container["Id"])
        await self.state.execute("DELETE FROM apps WHERE name = ?", (name,))
