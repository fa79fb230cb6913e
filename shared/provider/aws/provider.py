"""The AWS provider, opened as an async context manager: its clients are made on first use, closed at exit."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from shared import __version__
from shared.config import RackSettings
from shared.models import ImageStatus, System
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.appstacks import AppStacks
from shared.provider.aws.builds import AwsBuilds
from shared.provider.aws.clients import Clients, translated
from shared.provider.aws.formation import AwsFormation
from shared.provider.aws.logs import AwsLogs
from shared.provider.aws.objects import AwsObjects
from shared.provider.aws.processes import AwsProcesses
from shared.provider.aws.releases import AwsReleases
from shared.provider.aws.resources import AwsResources
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.aws.stacks import human_status, parameters, update_parameters, with_defaults
from shared.provider.aws.state import State
from shared.provider.aws.timers import AwsTimers
from shared.provider.workers import Loop, supervise
from shared.tls import CERT_NAME, tls_dir


class AwsSystem:
    def __init__(self, rack: str, region: str, clients: Clients | None = None, stack: str = "") -> None:
        self.rack = rack
        self.region = region
        self.clients = clients
        self.stack = stack

    async def get(self) -> System:
        """The rack; started against its stack (``RACK_AWS_STACK``), its status is the stack's (``updating``
        while `rack params set` changes it, ``deleting`` during an uninstall)."""
        status = "running"
        if self.stack and self.clients is not None:
            cfn = await self.clients.get("cloudformation")
            with translated(f"no such rack stack: {self.stack}"):
                found = (await cfn.describe_stacks(StackName=self.stack))["Stacks"]
            status = human_status(found[0].get("StackStatus") if found else None)
        return System(name=self.rack, version=__version__, provider="aws", status=status)

    async def images(self, images: list[str]) -> list[ImageStatus]:
        """Builds run in an ECS task on the rack's builder image, which pulls from the registries the
        cluster's network reaches: the rack cannot tell from here."""
        return [ImageStatus(image=image, present=None, pullable=None) for image in images]

    async def adopt(self) -> None:
        return None


class AwsParams:
    """The rack's parameters are its stack's (CloudFormation); set through ``convox rack params set``."""

    def __init__(self, clients: Clients, stack: str) -> None:
        self.clients = clients
        self.stack = stack

    async def get(self) -> dict[str, str]:
        cfn = await self.clients.get("cloudformation")
        with translated(f"no such rack stack: {self.stack}"):
            stacks = (await cfn.describe_stacks(StackName=self.stack))["Stacks"]
        return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stacks[0].get("Parameters", [])}

    async def set(self, values: dict[str, str]) -> dict[str, str]:
        """Update the rack stack with the new values (an empty one: the template's default), as
        `convox rack params set` through this rack's API; returns once the update has begun (the rack's
        status is ``updating`` until it completes: on AWS an Ami change replaces the instances)."""
        cfn = await self.clients.get("cloudformation")
        with translated(f"no such rack stack: {self.stack}"):
            changes = await with_defaults(cfn, self.stack, values)
            updated = await update_parameters(cfn, self.stack, changes, wait_done=False)
        return parameters(updated)


class AwsProvider:
    name = "aws"

    def __init__(self, settings: RackSettings, aws: AwsProviderSettings | None = None) -> None:
        aws = aws or AwsProviderSettings()
        self.settings = settings
        self.aws = aws
        self.clients = Clients(aws.region)
        self.state = State(self.clients, aws, settings.name)
        self.stacks = AppStacks(self.clients, settings.name, aws)
        self.apps = AwsApps(self.state, self.clients, settings.name, self.stacks)
        self.system = AwsSystem(settings.name, self.clients.region, self.clients, aws.stack)
        self.releases = AwsReleases(self.state, self.apps)
        self.formation = AwsFormation(self.state, self.clients, self.apps, self.releases, settings.name, aws)
        self.releases.formation = self.formation
        self.processes = AwsProcesses(self.clients, self.apps, self.releases, self.formation, settings.name, aws)
        self.apps.on_delete.append(self.processes.forget)
        self.apps.on_delete.append(self.formation.forget)
        self.objects = AwsObjects(self.state, self.apps)
        self.builds = AwsBuilds(
            self.state,
            self.clients,
            self.apps,
            self.releases,
            self.formation,
            settings.name,
            aws.build_image,
            aws.report_url,
            self.objects,
            report_ca=aws.report_ca,
            own_certificate=tls_dir(settings.data_dir) / CERT_NAME,
            registry=aws.build_registry,
        )
        self.logs = AwsLogs(self.clients, self.apps, self.processes, settings.name, aws)
        self.formation.events = self.logs.event
        self.timers = AwsTimers(
            self.state, self.clients, self.apps, self.releases, self.formation, self.processes, self.logs
        )
        self.resources = AwsResources(self.state, self.clients, self.apps, settings.name, aws)
        self.apps.on_delete.append(self.resources.forget_app)
        self.params = AwsParams(self.clients, aws.stack or settings.name)

    async def workers(self, started: Callable[[], None] | None = None) -> None:
        """The rack's background work (:meth:`shared.provider.contract.Provider.workers`): a promote cut short
        found at the start, the timers' scheduler, the reaper of one-off time limits, the failing of builds
        whose builder task stopped without reporting, the backing services' creations and deletions whose
        process died, and the rack's own log group made sure of (ECS ships the apps' lines: nothing else to
        collect). ECS keeps the counts and rolls releases out itself."""
        loops = [
            Loop("logs.group", start=self.logs.ensure_group),
            Loop("formation.adopt", start=self.formation.adopt),
            *self.timers.loops(),
            *self.processes.loops(),
            Loop("builds.expire", self.builds.expire, start=self._sweep_builds),
            *self.resources.loops(),
        ]
        await supervise(loops, started)

    async def _sweep_builds(self) -> None:
        await self.builds.sweep()

    async def __aenter__(self) -> Self:
        if self.aws.bootstrap:
            await self.state.bootstrap()
            ecs = await self.clients.get("ecs")
            with translated("cannot create the rack's cluster"):
                clusters = (await ecs.describe_clusters(clusters=[self.formation.cluster])).get("clusters", [])
                if not any(c.get("status") == "ACTIVE" for c in clusters):
                    await ecs.create_cluster(clusterName=self.formation.cluster)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.timers.close()
        await self.resources.close()
        await self.processes.close()
        await self.logs.close()
        await self.clients.close()
