"""Linking a backing service into an app: ``<NAME>_URL`` in the app's environment, through a release
promoted through the provider (the roll-out runs under the rack's workers, in the logs service).

A link or unlink makes a new release from the app's latest one with the variable set or removed. When the
app has an active release, the new one is promoted (after any roll-out in progress) and the call returns
once it serves, so the app's processes, and any process started after, see the change; an app that was never
deployed gets it with its first deploy. Links and unlinks of one app are serialised.

A manifest's resources are linked differently: the builds service asks (:meth:`Linker.declare`) before it
makes a build's release, and the variables go into that release, which the deploy promotes; nothing is
promoted here. Such a link is undone by dropping the resource from the manifest, not by an unlink.
"""

from __future__ import annotations

import asyncio

from shared.errors import Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.models import Resource, ResourceEnv
from shared.names import url_key
from shared.provider import Provider

log = Logger("provisioner")
ROLLOUT_TIMEOUT = 300.0


def env_key(name: str) -> str:
    """The variable a linked service is found by: ``my-db`` gives ``MY_DB_URL``."""
    return url_key(name)


class Linker:
    def __init__(self, provider: Provider, rollout_timeout: float = ROLLOUT_TIMEOUT) -> None:
        self.provider = provider
        self.rollout_timeout = rollout_timeout
        self.locks: dict[str, asyncio.Lock] = {}

    def _lock(self, app: str) -> asyncio.Lock:
        return self.locks.setdefault(app, asyncio.Lock())

    async def link(self, name: str, app: str) -> Resource:
        async with self._lock(app):
            await self.provider.resources.link(name, app)
            try:
                url = (await self.provider.resources.get(name, reveal=True)).url
                release = await self.provider.releases.change_env(
                    app, set={env_key(name): url}, description=f"link {name}"
                )
            except BaseException:
                await self.provider.resources.unlink(name, app)
                raise
            log.log("resource.link.release", resource=name, app=app, key=env_key(name), release=release.id)
            await self._roll_out(app, release.id)
        return await self.provider.resources.get(name)

    async def unlink(self, name: str, app: str) -> Resource:
        async with self._lock(app):
            resource = await self.provider.resources.get(name)
            if app not in resource.apps:
                raise NotFound(f"service {name} is not linked to {app}")
            for declared, service in (await self.provider.resources.declared(app)).items():
                if service == name:
                    raise Conflict(
                        f"service {name} is resources.{declared} of {app}'s manifest: remove it there and deploy"
                    )
            release_id = ""
            if env_key(name) in await self.provider.releases.environment(app):
                release = await self.provider.releases.change_env(
                    app, unset=[env_key(name)], description=f"unlink {name}"
                )
                release_id = release.id
                log.log("resource.unlink.release", resource=name, app=app, key=env_key(name), release=release_id)
            await self.provider.resources.unlink(name, app)
            if release_id:
                await self._roll_out(app, release_id)
        return await self.provider.resources.get(name)

    async def declare(self, app: str, wanted: dict[str, str]) -> ResourceEnv:
        """The resources of a build's manifest (name to type), each ready and linked, and those of the app's
        previous manifests that it dropped unlinked (their services and data stay): the environment the
        build's release gets. No release is made here; the build makes it."""
        async with self._lock(app):
            before = await self.provider.resources.declared(app)
            env = ResourceEnv()
            for name, kind in sorted(wanted.items()):
                resource = await self.provider.resources.declare(app, name, kind)
                env.set[url_key(name)] = resource.url
            for name in sorted(set(before) - set(wanted)):
                await self.provider.resources.undeclare(app, name)
                env.unset.append(url_key(name))
            log.log("resource.declare.manifest", app=app, linked=len(env.set), unlinked=len(env.unset))
            return env

    async def _roll_out(self, app: str, release: str) -> None:
        """Promote ``release`` when the app runs one (waiting out a roll-out in progress), then wait until
        it serves; a failed roll-out is an error with its reason (the previous release keeps serving)."""
        if not (await self.provider.apps.get(app)).release:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rollout_timeout
        while True:
            try:
                await self.provider.releases.promote(app, release)
                break
            except Conflict:
                left = deadline - loop.time()
                if left <= 0 or (await self.provider.releases.settled(app, left)).status == "updating":
                    raise Conflict(f"app {app} is still updating: promote release {release} later") from None
        current = await self.provider.releases.settled(app, max(0.0, deadline - loop.time()))
        if current.status == "updating":
            raise RackError(f"release {release} is still rolling out after {self.rollout_timeout:.0f}s", 504)
        if current.release != release:
            reason = f" ({current.failure})" if current.failed_release == release and current.failure else ""
            raise RackError(
                f"release {release} failed to roll out{reason}; {current.release or 'nothing'} is still serving "
                f"(see `convox logs --app {app}`)",
                status=502,
            )
