"""Formation on AWS: one ECS task definition and one ECS service per process type of the active release.

Promote registers a task definition per process type (image, command, environment, memory, ports and the
``awslogs`` driver into the app's log group, stream prefix = the type) and creates or updates its service;
promotes of one app are serialised by a lock in the app's item (a conditional write with a lease), so two
at once both happen, in turn, and the app ends on the later one. Scale sets the desired count (and memory:
a new task-definition revision) and remembers both in the app's item so that later promotes keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import BadRequest, Conflict, NotFound
from shared.logfmt import Logger
from shared.manifest import Manifest
from shared.models import App, Formation, FormationUpdate, Release
from shared.provider.aws.apps import AwsApps, log_group
from shared.provider.aws.clients import Clients, translated
from shared.provider.aws.releases import AwsReleases
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.aws.state import State

log = Logger("formation")
LEASE = 120.0
"""Seconds a promote holds its app's lock at most (a crashed promote frees it after this)."""


def manifest_of(release: Release) -> Manifest:
    if not release.manifest:
        raise BadRequest(f"release {release.id} has no build to run")
    return Manifest.model_validate_json(release.manifest)


def family(rack: str, app: str, service: str) -> str:
    """The task-definition family and the ECS service name of a process type: ``RACK-APP_TYPE`` (no app or
    type name holds ``_``, so one app's prefix never matches another's, ``a_`` against ``a-b_``)."""
    return f"{rack}-{app}_{service}"


def run_family(rack: str, app: str, service: str) -> str:
    """The task-definition family of one-off processes of a type run with an image of their own."""
    return f"{rack}-{app}_run_{service}"


class EventWriter(Protocol):
    """Where platform events go: ``AwsLogs.event`` (the app's ``convox/events`` stream); it never raises."""

    def __call__(self, app: str, message: str, *, release: str = "") -> Awaitable[None]: ...


@dataclass
class Desired:
    service: str
    image: str
    count: int
    memory: int
    cpu: int
    env: dict[str, str]
    command: list[str] | None
    port: int | None
    ports: list[int] = field(default_factory=list)
    """Every container port of the type (the main one first)."""


class AwsFormation:
    def __init__(
        self,
        state: State,
        clients: Clients,
        apps: AwsApps,
        releases: AwsReleases,
        rack: str,
        settings: AwsProviderSettings,
    ) -> None:
        self.state = state
        self.clients = clients
        self.apps = apps
        self.releases = releases
        self.rack = rack
        self.settings = settings
        self.cluster = settings.cluster or rack
        self._locks: dict[str, asyncio.Lock] = {}
        self.checks: list[Callable[[Release], Awaitable[None]]] = []
        """Run at promote before any change: each raises (a 400) for a release it cannot carry out (timers)."""
        self.events: EventWriter | None = None
        """Set by the provider: promotes, scales and restarts are platform events in the app's log."""

    async def emit(self, app: str, message: str, release: str = "") -> None:
        if self.events is not None:
            await self.events(app, message, release=release)

    async def ecs(self) -> Any:
        return await self.clients.get("ecs")

    async def desired(self, release: Release, overrides: dict[str, Any]) -> list[Desired]:
        """What each process type of the release runs; a manifest or environment problem raises now."""
        manifest = manifest_of(release)
        images: dict[str, str] = {}
        if release.build:
            build = await self.state.get_item(
                self.state.builds_table, {"id": release.build}, f"no such build: {release.build}"
            )
            images = dict(build.get("images", {}))
        wanted = []
        for name, service in sorted(manifest.services.items()):
            override = overrides.get(name, {})
            env = manifest.service_environment(name, release.env)
            if service.port is not None:
                env.setdefault("PORT", str(service.port))
            image = service.image or images.get(name, "")
            if not image:
                raise BadRequest(f"release {release.id} has no image for {name}")
            command = service.command
            wanted.append(
                Desired(
                    service=name,
                    image=image,
                    count=int(override.get("count", service.scale.count)),
                    memory=int(override.get("memory", service.scale.memory)),
                    cpu=service.scale.cpu,
                    env=env,
                    command=["sh", "-c", command] if isinstance(command, str) else command,
                    port=service.port,
                    ports=[mapping.container for mapping in service.ports],
                )
            )
        return wanted

    def task_definition(self, app: str, release: Release, want: Desired) -> dict[str, Any]:
        env = {**want.env, "APP": app, "RACK": self.rack, "RELEASE": release.id, "SERVICE": want.service}
        container: dict[str, Any] = {
            "name": want.service,
            "image": want.image,
            "essential": True,
            "memory": want.memory,
            "cpu": want.cpu,
            "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "dockerLabels": {
                "convox.rack": self.rack,
                "convox.app": app,
                "convox.release": release.id,
                "convox.type": want.service,
            },
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": log_group(self.state.log_prefix, app),
                    "awslogs-region": self.clients.region,
                    "awslogs-stream-prefix": want.service,
                },
            },
        }
        if want.command:
            container["command"] = want.command
        if want.ports:  # bridge mode: no hostPort, so ECS picks one per task and registers it with the balancer
            container["portMappings"] = [{"containerPort": port, "protocol": "tcp"} for port in want.ports]
        definition: dict[str, Any] = {
            "family": family(self.rack, app, want.service),
            "containerDefinitions": [container],
            "tags": self.tags(app, want.service, release.id),
        }
        if self.settings.launch_type == "FARGATE":
            definition.update(
                networkMode="awsvpc",
                requiresCompatibilities=["FARGATE"],
                cpu=str(max(256, want.cpu)),
                memory=str(max(512, want.memory)),
            )
        else:
            definition.update(networkMode="bridge", requiresCompatibilities=["EC2"])
        if self.settings.execution_role:
            definition["executionRoleArn"] = self.settings.execution_role
        return definition

    def tags(self, app: str, service: str, release: str) -> list[dict[str, str]]:
        return [
            {"key": "convox.rack", "value": self.rack},
            {"key": "convox.app", "value": app},
            {"key": "convox.type", "value": service},
            {"key": "convox.release", "value": release},
        ]

    def network(self) -> dict[str, Any]:
        if self.settings.launch_type != "FARGATE":
            return {}
        return {
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": self.settings.subnets,
                    "securityGroups": self.settings.security_groups,
                    "assignPublicIp": "DISABLED",
                }
            }
        }

    async def services(self, app: str) -> dict[str, dict[str, Any]]:
        """The app's ECS services that are not deleted, by process type."""
        ecs = await self.ecs()
        prefix = family(self.rack, app, "")
        arns: list[str] = []
        with translated(f"cannot list the services of {app}"):
            paginator = ecs.get_paginator("list_services")
            async for page in paginator.paginate(cluster=self.cluster):
                arns.extend(a for a in page.get("serviceArns", []) if a.rsplit("/", 1)[-1].startswith(prefix))
            found: dict[str, dict[str, Any]] = {}
            for start in range(0, len(arns), 10):
                described = await ecs.describe_services(cluster=self.cluster, services=arns[start : start + 10])
                for service in described.get("services", []):
                    if service.get("status") != "INACTIVE":
                        found[service["serviceName"][len(prefix) :]] = service
        return found

    @contextlib.asynccontextmanager
    async def locked(self, app: str) -> AsyncIterator[None]:
        """The app's promote lock: a conditional write of a lease (across processes), waiting for another holder;
        within one process an asyncio lock queues them first."""
        async with self._locks.setdefault(app, asyncio.Lock()), self._leased(app):
            yield

    @contextlib.asynccontextmanager
    async def _leased(self, app: str) -> AsyncIterator[None]:
        deadline = time.monotonic() + self.settings.lock_timeout
        delay = 0.02
        while True:
            now = time.time()
            try:
                await self.apps.update(
                    app,
                    "SET #k = :until",
                    {":until": now + LEASE, ":now": now},
                    "attribute_not_exists(#k) OR #k < :now",
                )
                break
            except Conflict:
                if time.monotonic() > deadline:
                    raise Conflict(f"app {app} is being deployed by someone else; try again") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            with contextlib.suppress(NotFound):
                await self.apps.update(app, "REMOVE #k", {})

    async def apply(self, app: str, release: Release, only: str = "") -> None:
        """Register the release's task definitions and point the app's services at them (under the lock)."""
        item = await self.apps.item(app)
        wanted = await self.desired(release, item.get("formation", {}))
        balancers = await self.apps.stacks.update(app, manifest_of(release))
        ecs = await self.ecs()
        existing = await self.services(app)
        for want in wanted:
            if only and want.service != only:
                continue
            with translated(f"cannot register the task definition of {app}/{want.service}"):
                registered = await ecs.register_task_definition(**self.task_definition(app, release, want))
            arn = registered["taskDefinition"]["taskDefinitionArn"]
            name = family(self.rack, app, want.service)
            found = balancers.get(want.service)
            targets = [
                {"targetGroupArn": group, "containerName": want.service, "containerPort": ports.container}
                for ports, group in ([*found.public, *found.internal] if found else [])
                if group
            ]
            with translated(f"cannot update the service {name}"):
                if want.service in existing:
                    await ecs.update_service(
                        cluster=self.cluster,
                        service=name,
                        taskDefinition=arn,
                        desiredCount=want.count,
                        deploymentConfiguration={"maximumPercent": 200, "minimumHealthyPercent": 100},
                        **({"loadBalancers": targets} if targets else {}),
                    )
                else:
                    await ecs.create_service(
                        cluster=self.cluster,
                        serviceName=name,
                        taskDefinition=arn,
                        desiredCount=want.count,
                        launchType=self.settings.launch_type,
                        propagateTags="TASK_DEFINITION",
                        tags=self.tags(app, want.service, release.id),
                        deploymentConfiguration={"maximumPercent": 200, "minimumHealthyPercent": 100},
                        **({"loadBalancers": targets} if targets else {}),
                        **self.network(),
                    )
        if not only:
            names = {w.service for w in wanted}
            for service in set(existing) - names:
                await self.remove_service(app, service)

    async def remove_service(self, app: str, service: str) -> None:
        ecs = await self.ecs()
        name = family(self.rack, app, service)
        with translated(f"cannot remove the service {name}"):
            await ecs.update_service(cluster=self.cluster, service=name, desiredCount=0)
            await ecs.delete_service(cluster=self.cluster, service=name, force=True)

    async def promote(self, release: Release) -> App:
        app = release.app
        overrides = (await self.apps.item(app)).get("formation", {})
        await self.desired(release, overrides)  # a manifest or environment problem is a 400 before any change
        for check in self.checks:
            await check(release)
        async with self.locked(app):
            await self.apps.set_status(app, "updating")
            try:
                with log.measure("release.promote", app=app, release=release.id):
                    await self.apply(app, release)
            except BaseException as exc:
                with contextlib.suppress(NotFound):
                    await self.apps.set_status(app, "failed")
                    reason = getattr(exc, "message", "") or str(exc) or type(exc).__name__
                    await self.emit(app, f"release failed to roll out: {reason}", release.id)
                raise
            await self.apps.set_status(app, "running", release.id)
            await self.emit(app, "release promoted", release.id)
        return await self.apps.get(app)

    async def get(self, app: str) -> list[Formation]:
        current = await self.apps.item(app)
        if not current.get("release"):
            return []
        release = await self.releases.get(app, current["release"])
        services = await self.services(app)
        balancers = await self.apps.stacks.balancers(app, manifest_of(release))
        result = []
        for want in await self.desired(release, current.get("formation", {})):
            service = services.get(want.service, {})
            found = balancers.get(want.service)
            endpoints = found.endpoints if found and found.dns else []
            result.append(
                Formation(
                    name=want.service,
                    count=int(service.get("desiredCount", want.count)),
                    running=int(service.get("runningCount", 0)),
                    memory=want.memory,
                    ports=found.ports if found else [],
                    balancer=endpoints[0] if endpoints else "",
                    endpoints=endpoints,
                )
            )
        return result

    async def scale(self, app: str, service: str, update: FormationUpdate) -> Formation:
        current = await self.apps.item(app)
        if not current.get("release"):
            raise BadRequest(f"app {app} has no release yet: deploy it first")
        release = await self.releases.get(app, current["release"])
        if service not in manifest_of(release).services:
            raise NotFound(f"no such process type: {service}")
        if update.count is None and update.memory is None:
            raise BadRequest("nothing to change: give a count or a memory")
        async with self.locked(app):
            formation = dict((await self.apps.item(app)).get("formation", {}))
            entry = dict(formation.get(service, {}))
            if update.count is not None:
                entry["count"] = update.count
            if update.memory is not None:
                entry["memory"] = update.memory
            formation[service] = entry
            await self.apps.update(app, "SET #f = :f", {":f": formation})
            with log.measure("formation.scale", app=app, service=service, count=update.count, memory=update.memory):
                if update.memory is None:
                    ecs = await self.ecs()
                    with translated(f"no such process type: {service}"):
                        await ecs.update_service(
                            cluster=self.cluster, service=family(self.rack, app, service), desiredCount=update.count
                        )
                else:
                    await self.apply(app, release, only=service)
            changes = (("count", update.count), ("memory", update.memory))
            scaled = ", ".join(f"{key} {value}" for key, value in changes if value is not None)
            await self.emit(app, f"{service} scaled: {scaled}", release.id)
        return next(f for f in await self.get(app) if f.name == service)

    async def restart(self, app: str, service: str | None = None) -> list[Formation]:
        """A rolling restart: each ECS service (of one type) gets a new deployment of its task definition; ECS
        starts the new tasks before it stops the old ones (minimum healthy 100%)."""
        current = await self.apps.item(app)
        if not current.get("release"):
            raise BadRequest(f"app {app} has no release yet: deploy it first")
        release = await self.releases.get(app, current["release"])
        types = manifest_of(release).services
        if service is not None and service not in types:
            raise NotFound(f"no such process type: {service} (types: {', '.join(types) or 'none'})")
        if current.get("status") == "updating":
            raise Conflict(f"app {app} is updating: restart it when the roll-out is done")
        ecs = await self.ecs()
        async with self.locked(app):
            with log.measure("formation.restart", app=app, service=service or ""):
                for name in await self.services(app):
                    if service is None or name == service:
                        with translated(f"cannot restart {app}/{name}"):
                            await ecs.update_service(
                                cluster=self.cluster, service=family(self.rack, app, name), forceNewDeployment=True
                            )
            await self.emit(app, f"{service or 'every process type'} restarted", release.id)
        return await self.get(app)

    async def cancel(self, app: str) -> App:
        """Stop the ECS deployments in progress: each service whose newest deployment has not finished is
        pointed back at the task definition of the deployment it replaces (the release that was serving)."""
        await self.apps.item(app)
        ecs = await self.ecs()
        rolled_back = 0
        async with self.locked(app):
            for name, described in (await self.services(app)).items():
                deployments = described.get("deployments", [])
                primary = next((d for d in deployments if d.get("status") == "PRIMARY"), None)
                previous = next((d for d in deployments if d.get("status") == "ACTIVE"), None)
                if primary is None or previous is None or primary.get("rolloutState") == "COMPLETED":
                    continue
                with translated(f"cannot cancel the roll-out of {app}/{name}"):
                    await ecs.update_service(
                        cluster=self.cluster,
                        service=family(self.rack, app, name),
                        taskDefinition=previous["taskDefinition"],
                    )
                rolled_back += 1
        if not rolled_back:
            raise Conflict(f"app {app} is not updating: there is no roll-out to cancel")
        log.log("release.cancel", app=app, services=rolled_back)
        return await self.apps.get(app)

    async def forget(self, app: str) -> None:
        """A deleted app's services go (scaled to 0 first) and its task definitions are deregistered."""
        for service in await self.services(app):
            await self.remove_service(app, service)
        ecs = await self.ecs()
        with translated(f"cannot deregister the task definitions of {app}"):
            paginator = ecs.get_paginator("list_task_definitions")
            async for page in paginator.paginate(familyPrefix=family(self.rack, app, "")):
                for arn in page.get("taskDefinitionArns", []):
                    await ecs.deregister_task_definition(taskDefinition=arn)

    async def adopt(self) -> None:
        """After a (re)start: a promote cut short leaves its app ``updating``; ECS keeps the counts itself."""
        for app in await self.apps.list():
            if app.status == "updating":
                await self.apps.set_status(app.name, "failed" if not app.release else "running")
