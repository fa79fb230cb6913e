"""Apps on the local provider: rows in SQLite; deleting one removes its containers first."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiosqlite

from shared.errors import BadRequest, Conflict, NotFound
from shared.models import RACK_APP, App, invalid_app_name
from shared.names import is_app_name
from shared.provider.local.docker import LABEL_APP, LABEL_RACK, LABEL_SANDBOX, Docker
from shared.provider.local.rollouts import Rollouts
from shared.provider.local.state import State

APP_TABLES = (("releases", "app"), ("builds", "app"), ("formation", "app"), ("links", "app"), ("apps", "name"))
"""Where an app's records are, the app's own last."""


def _app(row: aiosqlite.Row, balancer: str = "", rollout: tuple[str, str, str] | None = None) -> App:
    status = row["status"]
    if status == "running" and not row["release"]:
        status = "created"  # nothing has served yet
    failed, failure = "", ""
    if rollout is not None and rollout[1] in ("failed", "cancelled"):
        failed, failure = rollout[0], rollout[2]
    return App(
        name=row["name"],
        status=status,
        release=row["release"],
        balancer=balancer,
        failed_release=failed,
        failure=failure,
    )


def check_name(name: str) -> None:
    if not is_app_name(name):
        raise BadRequest(invalid_app_name(name))


class LocalApps:
    def __init__(self, state: State, docker: Docker, rack: str, balancer_host: str = "127.0.0.1") -> None:
        self.state = state
        self.docker = docker
        self.rack = rack
        self.balancer_host = balancer_host
        self.rollouts = Rollouts(state)
        self.on_delete: list[Callable[[str], Awaitable[None]]] = []
        """Run when an app is being deleted, while its containers still exist."""
        self.after_delete: list[Callable[[str], Awaitable[None]]] = []
        """Run once its containers are gone (what they used can go now), before its records are."""

    async def _balancers(self) -> dict[str, str]:
        """Each app's balancer: its first public process type's (by name)."""
        rows = await self.state.fetch_all(
            "SELECT app, balancer_port, balancer_scheme FROM formation WHERE balancer_port IS NOT NULL "
            "ORDER BY app, service"
        )
        found: dict[str, str] = {}
        for row in rows:
            address = f"{self.balancer_host}:{row['balancer_port']}"
            found.setdefault(row["app"], f"{row['balancer_scheme']}://{address}" if row["balancer_scheme"] else address)
        return found

    async def create(self, name: str) -> App:
        check_name(name)
        if name == RACK_APP:
            raise Conflict(f"app name is reserved for the rack: {name}")
        created = datetime.now(UTC).isoformat()
        try:
            await self.state.execute(
                "INSERT INTO apps (name, status, release, created) VALUES (?, 'created', '', ?)", (name, created)
            )
        except aiosqlite.IntegrityError:
            raise Conflict(f"app already exists: {name}") from None
        return await self.get(name)

    async def get(self, name: str) -> App:
        check_name(name)
        row = await self.state.fetch_one("SELECT * FROM apps WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no such app: {name}")
        return _app(row, (await self._balancers()).get(name, ""), await self.rollouts.latest(name))

    async def list(self) -> list[App]:
        balancers = await self._balancers()
        rows = await self.state.fetch_all("SELECT * FROM apps ORDER BY name")
        return [_app(row, balancers.get(row["name"], ""), await self.rollouts.latest(row["name"])) for row in rows]

    async def set_status(self, name: str, status: str, release: str | None = None) -> None:
        if release is None:
            await self.state.execute("UPDATE apps SET status = ? WHERE name = ?", (status, name))
        else:
            await self.state.execute("UPDATE apps SET status = ?, release = ? WHERE name = ?", (status, release, name))

    async def delete(self, name: str) -> None:
        await self.get(name)
        await self.set_status(name, "deleting")
        for hook in self.on_delete:
            await hook(name)
        for labels in ({LABEL_RACK: self.rack, LABEL_APP: name}, {LABEL_RACK: self.rack, LABEL_SANDBOX: name}):
            for container in await self.docker.containers(labels, all=True):
                with contextlib.suppress(NotFound, Conflict):  # a one-off removing itself, or already gone
                    await self.docker.remove(container["Id"])
        for hook in self.after_delete:
            await hook(name)
        await self.rollouts.forget(name)
        # its records go together: a kill before this leaves a `deleting` app that the next start finishes,
        # never an app without its releases
        async with self.state.transaction() as tx:
            for table, column in APP_TABLES:
                await tx.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))
