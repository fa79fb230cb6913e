"""The embedded provider: Docker Engine (aiodocker) for containers, SQLite for state, files for objects."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from shared.config import LocalProviderSettings, RackSettings
from shared.provider.local.applocks import AppLocks
from shared.provider.local.apps import LocalApps
from shared.provider.local.balancers import Balancers
from shared.provider.local.bell import Bell
from shared.provider.local.builds import LocalBuilds
from shared.provider.local.certificates import AppCertificates
from shared.provider.local.docker import Docker
from shared.provider.local.events import Events
from shared.provider.local.formation import LocalFormation
from shared.provider.local.logs import LocalLogs
from shared.provider.local.objects import LocalObjects
from shared.provider.local.params import LocalParams
from shared.provider.local.processes import LocalProcesses
from shared.provider.local.promotions import Promotions
from shared.provider.local.releases import LocalReleases
from shared.provider.local.resources import LocalResources
from shared.provider.local.runners import Runner
from shared.provider.local.state import State
from shared.provider.local.system import LocalSystem
from shared.provider.local.timers import LocalTimers
from shared.provider.workers import Loop, supervise


class LocalProvider:
    name = "local"

    def __init__(self, settings: RackSettings, local: LocalProviderSettings | None = None) -> None:
        local = local or LocalProviderSettings()
        self.settings = settings
        self.state = State(settings.data_dir / "state.db")
        self.runner = Runner(settings.data_dir / "runners")
        """This process's liveness lock, held by work that the workers' owner takes over if this process dies."""
        self.docker = Docker(local.docker_url, local.docker_timeout)
        self.apps = LocalApps(self.state, self.docker, settings.name, settings.balancer_host)
        self.system = LocalSystem(settings.name, self.docker)
        self.releases = LocalReleases(self.state, self.apps)
        self.processes = LocalProcesses(self.docker, self.apps, settings.name, self.runner, self.releases)
        self.balancers = Balancers(
            settings.run_dir, settings.data_dir / "logs" / "balancer.log", local.balancer_orphan_seconds
        )
        self.certificates = AppCertificates(settings.data_dir, settings.balancer_host, settings.name)
        self.formation = LocalFormation(
            self.state,
            self.docker,
            self.apps,
            self.releases,
            settings.name,
            settings.balancer_host,
            self.balancers,
            self.certificates,
            AppLocks(settings.run_dir / "formation"),
        )
        self.apps.on_delete.append(self.formation.forget)
        self.bell = Bell(settings.run_dir / "bell")
        self.apps.rollouts.bell = self.bell
        self.promotions = Promotions(self.state, self.formation, self.bell)
        self.releases.promotions = self.promotions
        self.formation.events.bell = self.bell
        timer_events = Events(self.state)
        timer_events.bell = self.bell
        self.timers = LocalTimers(self.docker, self.apps, self.releases, self.processes, timer_events)
        self.apps.on_delete.append(self.timers.forget)
        self.params = LocalParams(self.state)
        self.resources = LocalResources(
            self.state, self.docker, self.apps, self.params, settings.name, self.formation.network, self.runner
        )
        self.apps.on_delete.append(self.resources.forget_app)
        self.objects = LocalObjects(self.apps, settings.data_dir)
        self.apps.after_delete.append(self.objects.forget)
        self.builds = LocalBuilds(
            self.state,
            self.docker,
            self.apps,
            self.releases,
            settings.name,
            settings.data_dir,
            self.objects,
            self.runner,
        )
        self.apps.after_delete.append(self.builds.forget_app)
        self.apps.after_delete.append(self.formation.volumes.forget)
        self.apps.after_delete.append(self.certificates.forget)
        self.logs = LocalLogs(self.state, self.docker, self.apps, settings.name, settings.data_dir)
        self.logs.bell = self.logs.events.bell = self.bell

    async def workers(self, started: Callable[[], None] | None = None) -> None:
        """The rack's background work (see :meth:`shared.provider.contract.Provider.workers`), run by the logs
        service: the log collector (whose store hands new lines to the followers of this process), formation's
        adoption, reconciliation and balancers, the roll-outs (and their cancels) asked from other services,
        the timers, the failing of builds whose builds service died, the backing services (work whose
        process died finished or undone, missing servers brought back), and the one-offs' (interactive ones
        whose service died ended, time limits enforced, ended ones removed, sandboxes no live process holds
        removed)."""
        self.promotions.owner = True
        loops = [
            Loop("logs.collect", self.logs.collect, start=self.logs.start),
            *self.formation.loops(),
            Loop("promotions", self.promotions.serve, start=self.promotions.recover),
            *self.timers.loops(),
            Loop("builds.expire", self.builds.expire),
            *self.resources.loops(),
            *self.processes.loops(),
        ]
        try:
            await supervise(loops, started)
        finally:
            self.promotions.owner = False

    async def __aenter__(self) -> Self:
        await self.state.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.builds.close()
        await self.timers.close()
        await self.processes.close()
        await self.formation.close()
        await self.resources.close()
        await self.logs.close()
        await self.docker.close()
        self.runner.release()
        await self.bell.close()
        await self.state.close()
