"""Releases on AWS: items in ``<prefix>-releases``, each environment an SSE-KMS object in the settings bucket.

A new release is written in one transaction with the app's ``latest`` pointer, on the condition that the
pointer is still the release it was made from: two releases made at once never both claim to follow the
same one. :meth:`AwsReleases.change_environment` re-reads and re-applies a change that lost such a race,
so that two concurrent ``convox env set`` never lose one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from shared.errors import BadRequest, Conflict, NotFound
from shared.ids import release_id
from shared.logfmt import Logger
from shared.models import App, Release
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.clients import error_code, translated
from shared.provider.aws.state import Item, State, now_iso, parse_iso, to_item
from shared.provider.environment import changed_env, merged_env

if TYPE_CHECKING:
    from shared.provider.aws.formation import AwsFormation

RETRIES = 50
SETTLED_SECONDS = 1.0
"""How often `settled` reads an app that another service is promoting (ECS has no notification here)."""
log = Logger("releases")
EnvChange = Callable[[dict[str, str]], dict[str, str]]


def env_key(app: str, release: str) -> str:
    return f"apps/{app}/releases/{release}/env.json"


class AwsReleases:
    def __init__(self, state: State, apps: AwsApps) -> None:
        self.state = state
        self.apps = apps
        self.formation: AwsFormation | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    async def _release(self, item: Item) -> Release:
        env = await self.state.get_json(env_key(item["app"], item["id"]))
        return Release(
            id=item["id"],
            app=item["app"],
            build=item.get("build", ""),
            env={str(k): str(v) for k, v in env.items()},
            manifest=item.get("manifest", ""),
            description=item.get("description", ""),
            created=parse_iso(item["created"]),
        )

    async def _item(self, app: str, release: str) -> Item:
        item = await self.state.get_item(self.state.releases_table, {"id": release}, f"no such release: {release}")
        if item.get("app") != app:
            raise NotFound(f"no such release: {release}")
        return item

    async def latest(self, app: str) -> Release | None:
        latest = (await self.apps.item(app)).get("latest", "")
        return await self._release(await self._item(app, latest)) if latest else None

    async def _build(self, app: str, build: str) -> Item:
        item = await self.state.get_item(self.state.builds_table, {"id": build}, f"no such build: {build}")
        if item.get("app") != app:
            raise NotFound(f"no such build: {build}")
        if item.get("status") != "complete":
            raise BadRequest(f"build {build} is {item.get('status')}, not complete")
        return item

    async def _create(
        self, app: str, build: str | None, change: EnvChange, description: str, manifest_of_build: str | None = None
    ) -> Release:
        async with self._locks.setdefault(app, asyncio.Lock()):  # fewer retries within one process
            for _ in range(RETRIES):
                base_id = (await self.apps.item(app)).get("latest", "")
                base = await self._release(await self._item(app, base_id)) if base_id else None
                manifest = base.manifest if base else ""
                use_build = (base.build if base else "") if build is None else build
                if build:
                    manifest = (
                        manifest_of_build
                        if manifest_of_build is not None
                        else (await self._build(app, build)).get("manifest", "")
                    )
                release = Release(
                    id=release_id(),
                    app=app,
                    build=use_build,
                    env=change(dict(base.env) if base else {}),
                    manifest=manifest,
                    description=description,
                    created=parse_iso(now_iso()),
                )
                if await self.write(release, base_id):
                    return release
                # another release came first (another process): make this one again on top of it
        raise Conflict(f"app {app} is changing too fast to make a release; try again")

    async def write(self, release: Release, base_id: str) -> bool:
        """Store ``release`` as the app's latest if ``base_id`` still is (one transaction); False, with
        nothing stored, when another release came first."""
        app = release.app
        db = await self.state.dynamodb()
        created = release.created.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if release.created else now_iso()
        await self.state.put_secret_json(env_key(app, release.id), release.env)
        item = {
            "id": release.id,
            "app": app,
            "build": release.build,
            "manifest": release.manifest,
            "description": release.description,
            "created": created,
        }
        try:
            await db.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.state.releases_table,
                            "Item": to_item(item),
                            "ConditionExpression": "attribute_not_exists(id)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.state.apps_table,
                            "Key": to_item({"name": app}),
                            "UpdateExpression": "SET #l = :new",
                            "ConditionExpression": "attribute_exists(#n) AND #l = :old",
                            "ExpressionAttributeNames": {"#l": "latest", "#n": "name"},
                            "ExpressionAttributeValues": to_item({":new": release.id, ":old": base_id}),
                        }
                    },
                ]
            )
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                await self.state.delete_object(env_key(app, release.id))
                with translated(f"cannot create a release of {app}"):
                    raise
            return await self._settle(app, release.id, item)
        return True

    async def _settle(self, app: str, release: str, item: Item) -> bool:
        """After a cancelled transaction: whether the release was made after all. A transaction is all or
        nothing on AWS, so this only removes the environment; moto applies half of one when requests race
        (it is not thread-safe), and then this undoes the half or completes it, by what the pointer says."""
        latest = (await self.apps.item(app)).get("latest", "")  # NotFound when the app went meanwhile
        db = await self.state.dynamodb()
        try:
            await self._item(app, release)
            exists = True
        except NotFound:
            exists = False
        if latest == release:
            if not exists:
                with translated(f"cannot create a release of {app}"):
                    await db.put_item(TableName=self.state.releases_table, Item=to_item(item))
            return True
        if exists:
            log.error("release.create", app=app, release=release, message="undoing a half-applied transaction")
            with translated(f"cannot create a release of {app}"):
                await db.delete_item(TableName=self.state.releases_table, Key=to_item({"id": release}))
        await self.state.delete_object(env_key(app, release))
        return False

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
        await self.apps.item(app)
        if build:
            await self._build(app, build)

        def change(base: dict[str, str]) -> dict[str, str]:
            return merged_env(base if env is None else env, set, unset)

        return await self._create(app, build, change, description)

    async def create_for_build(
        self,
        app: str,
        build: str,
        manifest: str,
        *,
        description: str = "",
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
    ) -> Release:
        """The release of a build whose builder has reported (``AwsBuilds.finish``): made before the build is
        marked complete, so that a complete build always names its release."""

        def change(base: dict[str, str]) -> dict[str, str]:
            return merged_env(base, set, unset)

        return await self._create(app, build, change, description, manifest)

    async def change_env(
        self,
        app: str,
        *,
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
        replace: bool = False,
        description: str = "",
    ) -> Release:
        """The contract's atomic environment change: ``set`` on top of the latest release's environment (of
        nothing with ``replace``), ``unset`` removed (NotFound for a key that is not there), applied to
        whichever release is latest when it is written."""
        await self.apps.item(app)

        def change(base: dict[str, str]) -> dict[str, str]:
            return changed_env(base, set, unset, replace)

        return await self._create(app, None, change, description)

    async def change_environment(
        self, app: str, set: dict[str, str] | None = None, unset: list[str] | None = None, description: str = ""
    ) -> Release:
        """A release whose environment is the latest one's with ``set`` and without ``unset``, applied to
        whichever release is latest when it is written (a concurrent change is never lost)."""
        await self.apps.item(app)

        def change(base: dict[str, str]) -> dict[str, str]:
            changed = {**base, **(set or {})}
            for key in unset or []:
                changed.pop(key, None)
            return changed

        return await self._create(app, None, change, description)

    async def get(self, app: str, release_id: str) -> Release:
        await self.apps.item(app)
        return await self._release(await self._item(app, release_id))

    async def environment(self, app: str) -> dict[str, str]:
        latest = await self.latest(app)
        return dict(latest.env) if latest else {}

    async def promote(self, app: str, release_id: str) -> App:
        release = await self.get(app, release_id)
        if self.formation is None:
            raise RuntimeError("the roll-out is not wired to this provider")
        return await self.formation.promote(release)

    async def settled(self, app: str, within: float) -> App:
        """A promote on ECS returns once the services are updated (under the app's lease, in the asking
        service); one asked from another service is seen here within a second."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            current = await self.apps.get(app)
            if current.status != "updating" or loop.time() >= deadline:
                return current
            await asyncio.sleep(min(SETTLED_SECONDS, max(0.0, deadline - loop.time())))

    async def list(self, app: str, limit: int = 20) -> list[Release]:
        await self.apps.item(app)
        items = await self.state.query_app(self.state.releases_table, app, max(1, min(limit, 1000)))
        return [await self._release(item) for item in items]
