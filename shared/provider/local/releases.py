"""Releases on the local provider: rows in SQLite; promoting one hands it to the roll-out."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiosqlite

from shared.errors import BadRequest, NotFound
from shared.ids import release_id
from shared.models import App, Release
from shared.provider.environment import changed_env, merged_env
from shared.provider.local.apps import LocalApps
from shared.provider.local.state import State

if TYPE_CHECKING:
    from shared.provider.local.formation import LocalFormation
    from shared.provider.local.promotions import Promotions


def to_release(row: aiosqlite.Row) -> Release:
    return Release(
        id=row["id"],
        app=row["app"],
        build=row["build"],
        env=json.loads(row["env"]),
        manifest=row["manifest"],
        description=row["description"],
        created=datetime.fromisoformat(row["created"]),
    )


class LocalReleases:
    def __init__(self, state: State, apps: LocalApps) -> None:
        self.state = state
        self.apps = apps
        self.formation: LocalFormation | None = None
        self.promotions: Promotions | None = None

    async def latest(self, app: str) -> Release | None:
        row = await self.state.fetch_one("SELECT * FROM releases WHERE app = ? ORDER BY seq DESC LIMIT 1", (app,))
        return to_release(row) if row else None

    async def create(
        self,
        app: str,
        *,
        build: str | None = None,
        env: dict[str, str] | None = None,
        description: str = "",
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
    ) -> Release:
        def change(current: dict[str, str]) -> dict[str, str]:
            return merged_env(current, set, unset)

        return await self._create(app, build=build, env=env, change=change, description=description)

    async def change_env(
        self,
        app: str,
        *,
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
        replace: bool = False,
        description: str = "",
    ) -> Release:
        """A new release whose environment is the latest one's (nothing with ``replace``) with ``set`` on top
        and ``unset`` removed (NotFound for one that is not there), read and written in one transaction: two
        changes at once (an `env set` and a `services link`) both land."""

        def change(current: dict[str, str]) -> dict[str, str]:
            return changed_env(current, set, unset, replace)

        return await self._create(app, change=change, description=description)

    async def _create(
        self,
        app: str,
        *,
        build: str | None = None,
        env: dict[str, str] | None = None,
        change: Callable[[dict[str, str]], dict[str, str]] | None = None,
        description: str = "",
    ) -> Release:
        await self.apps.get(app)
        async with self.state.transaction() as tx:  # what it copies from the latest release is the latest
            row = await tx.fetch_one("SELECT * FROM releases WHERE app = ? ORDER BY seq DESC LIMIT 1", (app,))
            latest = to_release(row) if row else None
            if await tx.fetch_one("SELECT 1 FROM apps WHERE name = ? AND status != 'deleting'", (app,)) is None:
                raise NotFound(f"no such app: {app}")
            manifest = latest.manifest if latest else ""
            if build is None:
                build = latest.build if latest else ""
            elif build:
                found = await tx.fetch_one("SELECT manifest, status FROM builds WHERE id = ? AND app = ?", (build, app))
                if found is None:
                    raise NotFound(f"no such build: {build}")
                if found["status"] != "complete":
                    raise BadRequest(f"build {build} is {found['status']}, not complete")
                manifest = found["manifest"]
            if env is None:
                env = latest.env if latest else {}
            if change is not None:
                env = change(env)
            release = Release(
                id=release_id(),
                app=app,
                build=build,
                env=env,
                manifest=manifest,
                description=description,
                created=datetime.now(UTC),
            )
            await tx.execute(
                "INSERT INTO releases (id, app, build, env, manifest, description, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    release.id,
                    app,
                    release.build,
                    json.dumps(release.env),
                    release.manifest,
                    release.description,
                    release.created.isoformat() if release.created else "",
                ),
            )
        return release

    async def get(self, app: str, release_id: str) -> Release:
        await self.apps.get(app)
        row = await self.state.fetch_one("SELECT * FROM releases WHERE id = ? AND app = ?", (release_id, app))
        if row is None:
            raise NotFound(f"no such release: {release_id}")
        return to_release(row)

    async def environment(self, app: str) -> dict[str, str]:
        await self.apps.get(app)
        latest = await self.latest(app)
        return dict(latest.env) if latest else {}

    async def promote(self, app: str, release_id: str) -> App:
        """From any service: the roll-out runs under the workers (:mod:`shared.provider.local.promotions`)."""
        if self.promotions is None:
            raise RuntimeError("the roll-out is not wired to this provider")
        return await self.promotions.promote(app, release_id)

    async def settled(self, app: str, within: float) -> App:
        if self.promotions is None:
            raise RuntimeError("the roll-out is not wired to this provider")
        return await self.promotions.settled(app, within)

    async def list(self, app: str, limit: int = 20) -> list[Release]:
        await self.apps.get(app)
        rows = await self.state.fetch_all(
            "SELECT * FROM releases WHERE app = ? ORDER BY seq DESC LIMIT ?", (app, max(1, min(limit, 1000)))
        )
        return [to_release(row) for row in rows]
