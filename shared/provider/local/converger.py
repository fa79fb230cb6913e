"""Converging an app's containers on a release, on the local provider: what a roll-out, a scale, a restart and
a reconciliation of :mod:`shared.provider.local.formation` do to the Engine's containers.

Each process type runs ``count`` containers of its image on the rack's network (where it resolves as
``TYPE.APP``), with the app's environment, a memory limit and Docker's restart policy (so a container that
exits is restarted with back-off and the count holds). New containers start and pass their health checks
before the balancers switch and the old ones stop, so a failed convergence leaves the previous release
serving; a type whose ``deployment`` bounds leave no room for the whole count at once is replaced in steps
(:mod:`shared.provider.local.rolling`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from shared.logfmt import Logger
from shared.models import Release
from shared.provider.local.desired import DRAIN_SECONDS, Desired
from shared.provider.local.docker import (
    LABEL_APP,
    LABEL_ONEOFF,
    LABEL_RACK,
    LABEL_RELEASE,
    LABEL_TYPE,
    ContainerInfo,
    ContainerRef,
    ContainerSummary,
    Docker,
)
from shared.provider.local.health import HealthChecks, container_ip
from shared.provider.local.listeners import Listeners
from shared.provider.local.rolling import next_step
from shared.provider.local.volumes import Volumes

log = Logger("formation")
LABEL_MEMORY = "convox.memory"
LABEL_GRACE = "convox.grace"
"""Seconds between SIGTERM and SIGKILL when the process stops (the manifest's termination.grace)."""
LABEL_DRAIN = "convox.drain"
"""Seconds the balancer lets the process's open connections finish (the manifest's drain)."""
MB = 1024 * 1024
ALIVE = ("running", "restarting")
"""States of a process that holds its place in the count (the Engine restarts one that exits by itself)."""


def _seconds(label: str | None, default: float) -> float:
    """A drain or grace time from a container's label (containers made before the label have the default)."""
    return int(label) if label is not None and label.isdigit() else default


class Converger:
    """Starts, health-checks, serves and retires the containers of an app's process types."""

    def __init__(
        self, docker: Docker, rack: str, network: str, listeners: Listeners, volumes: Volumes, health: HealthChecks
    ) -> None:
        self.docker = docker
        self.rack = rack
        self.network = network
        self.listeners = listeners
        self.volumes = volumes
        self.health = health
        self.switching: set[str] = set()
        """Apps whose convergence has switched their balancers: too late to cancel (the caller clears it once
        its step is over)."""

    async def containers(self, app: str, all: bool = False) -> list[ContainerSummary]:
        """The app's process containers (running ones, or ``all``), one-offs left out."""
        found = await self.docker.containers({LABEL_RACK: self.rack, LABEL_APP: app}, all=all)
        return [c for c in found if (c.get("Labels") or {}).get(LABEL_ONEOFF) != "true"]

    async def _start(self, release: Release, want: Desired) -> ContainerInfo:
        labels = {
            LABEL_RACK: self.rack,
            LABEL_APP: release.app,
            LABEL_TYPE: want.service,
            LABEL_RELEASE: release.id,
            LABEL_MEMORY: str(want.memory),
            LABEL_GRACE: str(want.grace),
            LABEL_DRAIN: str(want.drain),
        }
        config: dict[str, Any] = {
            "Image": want.image,
            "Env": [f"{key}={value}" for key, value in sorted(want.env.items())],
            "Labels": labels,
            "HostConfig": {
                "Memory": want.memory * MB,
                "MemorySwap": want.memory * MB,
                "RestartPolicy": {"Name": "unless-stopped"},
                "NetworkMode": self.network,
                "Init": True,
                "LogConfig": {"Type": "local"},  # keeps bytes that are not UTF-8 (json-file makes them U+FFFD)
            },
            "NetworkingConfig": {"EndpointsConfig": {self.network: {"Aliases": [f"{want.service}.{release.app}"]}}},
        }
        if want.volumes:
            config["HostConfig"]["Mounts"] = await self.volumes.mounts(release.app, want.service, want.volumes)
        if want.command:
            config["Cmd"] = want.command
        if want.port:
            config["ExposedPorts"] = {f"{port}/tcp": {} for port in (want.port, *want.other_ports)}
        name = f"{self.rack}-{release.app}-{want.service}-{secrets.token_hex(3)}"
        container = await self.docker.run(config, name=name)
        log.log("process.start", app=release.app, service=want.service, release=release.id, id=container["Id"][:12])
        return container

    async def converge(
        self, release: Release, wanted: list[Desired], only: str | None = None, fresh: bool = False
    ) -> None:
        """Make the app run ``release`` as ``wanted`` says (every process type, or the one type ``only``):
        :meth:`serve` it, then stop everything else (:meth:`retire`)."""
        await self.retire(await self.serve(release, wanted, only, fresh))

    async def serve(
        self, release: Release, wanted: list[Desired], only: str | None = None, fresh: bool = False
    ) -> Retirement:
        """Make ``release`` serve as ``wanted`` says (every process type, or the one type ``only``): start
        what is missing, health-check it, switch the balancers; what else runs (other releases, surplus,
        other memory) is left to stop, the :class:`Retirement` returned. Each process type goes in the steps
        its ``deployment`` allows (:mod:`shared.provider.local.rolling`); by default the whole count starts at
        once and nothing old stops until every new container is healthy. On a failure the new containers that
        do not serve yet are removed and the error raised (those that serve beside old ones stay: a roll-out
        goes back to the release that was serving, in the same steps). A process the Engine is restarting
        (its restart policy, with back-off) counts as there. ``fresh`` replaces every process in scope, even
        those that already run the release (a restart)."""
        app = release.app
        await self.docker.ensure_network(self.network, {LABEL_RACK: self.rack})
        current = [c for c in await self.containers(app) if c.get("State") in ALIVE]
        keep: dict[str, list[ContainerRef]] = {}
        started: list[ContainerRef] = []
        serving: set[str] = set()
        """New containers that serve beside old ones (the roll-out goes on in steps): kept on a failure."""
        rolls = []
        for want in wanted:
            of_type = [c for c in current if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service]
            matching = [
                c
                for c in of_type
                if (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
                and (c.get("Labels") or {}).get(LABEL_MEMORY) == str(want.memory)
            ]
            keep[want.service] = [] if fresh else [*matching[: want.count]]
            ids = {c["Id"] for c in keep[want.service]}
            old = [c for c in of_type if c["Id"] not in ids]
            rolls.append(self._roll(release, want, keep[want.service], old, started, serving))
        try:
            await _together(rolls)
        except BaseException:
            dropped = [c for c in started if c["Id"] not in serving]
            await asyncio.gather(*(self.docker.remove(c["Id"]) for c in dropped), return_exceptions=True)
            raise
        self.switching.add(app)
        for want in wanted:
            await self.listeners.serve(app, want, keep[want.service])
        kept = {c["Id"] for containers in keep.values() for c in containers}
        scope = {want.service for want in wanted}
        retire = [
            c
            for c in await self.containers(app, all=True)
            if c["Id"] not in kept and (only is None or (c.get("Labels") or {}).get(LABEL_TYPE) in scope)
        ]
        return Retirement(app, retire, scope if only is None else None)

    async def retire(self, retirement: Retirement) -> None:
        """Stop what :meth:`serve` left (each once its balancer's connections to it are done), and drop the
        balancers of the types that are gone from the app."""
        app = retirement.app
        await asyncio.gather(*(self._retire(app, c) for c in retirement.containers), return_exceptions=True)
        if retirement.scope is not None:
            await self.listeners.drop_others(app, retirement.scope)

    async def _roll(
        self,
        release: Release,
        want: Desired,
        keep: list[ContainerRef],
        old: list[ContainerSummary],
        started: list[ContainerRef],
        serving: set[str],
    ) -> None:
        """Bring ``keep`` (the type's processes of the release) up to its count in the steps its deployment
        allows: stop the old processes it may, start a batch, wait until they are healthy, let them serve
        beside the old ones left; again until the count is there. The old ones left stop afterwards."""
        others = [c for c in old if c.get("State") != "running"]  # being restarted by the Engine: not serving
        old_serving = [c for c in old if c.get("State") == "running"]
        while True:
            step = next_step(want.count, want.minimum, want.maximum, len(keep), len(old_serving), len(others))
            if not step.start:
                return
            if step.stop:
                stopping = (others + old_serving)[: step.stop]
                gone = {c["Id"] for c in stopping}
                others = [c for c in others if c["Id"] not in gone]
                old_serving = [c for c in old_serving if c["Id"] not in gone]
                await self.listeners.serve(release.app, want, old_serving + keep)
                await asyncio.gather(*(self._retire(release.app, c) for c in stopping))
            batch = []
            for _ in range(step.start):
                container = await self._start(release, want)
                started.append(container)
                batch.append(container)
            await asyncio.gather(*(self.health.wait(c, want.service, want.port, want.health) for c in batch))
            keep.extend(batch)
            if len(keep) < want.count:  # more steps to come: the new ones serve beside the old ones meanwhile
                serving.update(c["Id"] for c in batch)
                await self.listeners.serve(release.app, want, old_serving + keep)

    async def _retire(self, app: str, container: ContainerSummary) -> None:
        """Stop a process once the connections its balancer holds open to it are done (or drain time ends)."""
        labels = container.get("Labels") or {}
        service = labels.get(LABEL_TYPE, "")
        ip = container_ip(container, self.network)
        if ip:
            await self.listeners.drained(app, service, ip, _seconds(labels.get(LABEL_DRAIN), DRAIN_SECONDS))
        await self.docker.stop(container["Id"], grace=int(_seconds(labels.get(LABEL_GRACE), 10)))


@dataclass(frozen=True)
class Retirement:
    """What a roll-out leaves to stop once its release serves: the app's ``containers`` that are not to run,
    and the process types it has (``scope``: the balancers of every other type go; ``None`` when only one
    type was rolled out)."""

    app: str
    containers: list[ContainerSummary]
    scope: set[str] | None


async def _together(coroutines: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coroutines`` at once; when one fails, the others are cancelled (and awaited) and its error raised."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
