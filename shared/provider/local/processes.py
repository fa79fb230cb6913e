"""Processes on the local provider: containers labelled with the rack and the app.

A pid is a container id (shown as its first 12 characters) and is only found through its own app: a pid of
another app, of the rack or of nothing is a 404. One-off processes (``convox run``) are containers of the
release's image labelled ``convox.oneoff=true``, listed like the others while they run and removed when they
end. CPU and memory come from :mod:`shared.provider.engine.stats`; streams from
:mod:`shared.provider.engine.exec`.

An interactive one-off runs in the service that holds its stream and carries that service's runner token
(``convox.runner``, :mod:`shared.provider.local.runners`). What outlives a service is the owner's
(:meth:`LocalProcesses.loops`, under :meth:`LocalProvider.workers`): every :data:`REAP_SECONDS` it stops the
interactive one-offs whose runner is dead (their stream died with it, ``kill -9`` included) and the detached
ones past their deadline, removes ended ones nobody removed, ends the execs whose runner is dead
(:mod:`shared.provider.local.exec_records`), and every :data:`SWEEP_SECONDS` removes the sandboxes no live
process holds (:meth:`Sandboxes.sweep`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
import secrets
import shlex
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import BadRequest, Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.manifest import Manifest, Volume, resolve_manifest
from shared.models import Process, ProcessRunOptions, Release
from shared.provider.engine.exec import ExecStream, display
from shared.provider.engine.stats import Sampler
from shared.provider.local.apps import LocalApps
from shared.provider.local.attached import AttachedRun
from shared.provider.local.docker import (
    LABEL_APP,
    LABEL_ONEOFF,
    LABEL_RACK,
    LABEL_RELEASE,
    LABEL_RUNNER,
    LABEL_TIMER,
    LABEL_TYPE,
    ContainerConfig,
    ContainerInfo,
    ContainerSummary,
    Docker,
    ImageConfig,
    labels_of,
)
from shared.provider.local.exec_records import ExecRecords
from shared.provider.local.images import image_name
from shared.provider.local.receipts import Receipts
from shared.provider.local.runners import TOKEN, Runner, dead
from shared.provider.local.sandboxes import Sandboxes
from shared.provider.local.volumes import Volumes
from shared.provider.workers import Loop

if TYPE_CHECKING:
    from shared.provider.contract import ReleasesAPI

log = Logger("processes")

LABEL_COMMAND = "convox.command"
"""The command as the user gave it (a TTY run starts it through a sizing prelude)."""
LABEL_DEADLINE = "convox.deadline"
"""Unix time after which a one-off process is stopped (``convox run --timeout``)."""
LABEL_INTERACTIVE = "convox.interactive"
"""A one-off attached to a stream: it cannot outlive the service that holds the stream (its ``convox.runner``)."""
PID_RE = re.compile(r"^[0-9a-f]{1,64}$")
MB = 1024 * 1024
REAP_SECONDS = 5.0
"""How often the owner looks for one-offs to end: past their deadline, or interactive with a dead runner."""
SWEEP_SECONDS = 60.0
"""How often the owner's reaper also removes the sandboxes that no live process holds."""
STOP_GRACE = 10


def _started(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value).astimezone()
    if isinstance(value, str) and value and not value.startswith("0001"):
        return datetime.fromisoformat(value)
    return None


def _ports(raw: Any) -> list[str]:
    ports: list[str] = []
    if isinstance(raw, list):  # containers/json
        for port in raw:
            if port.get("PublicPort"):
                ports.append(f"{port['PublicPort']}:{port['PrivatePort']}")
    elif isinstance(raw, dict):  # containers/{id}/json NetworkSettings.Ports: published or only exposed
        for key, bindings in raw.items():
            private = key.split("/")[0]
            for binding in bindings or []:
                ports.append(f"{binding.get('HostPort')}:{private}")
            if not bindings:
                ports.append(private)
    return sorted(set(ports))


def to_process(container: ContainerSummary | ContainerInfo) -> Process:
    """A Process from either docker's list entry or its inspect document."""
    labels = labels_of(container)
    if "Command" in container:  # containers/json
        command = container["Command"]
        status = container.get("State") or "running"
        started = _started(container.get("Created"))
        ports = _ports(container.get("Ports"))
        image = container.get("Image", "")
    else:
        config = container.get("Config") or {}
        command = shlex.join([*((container.get("Path") and [container["Path"]]) or []), *container.get("Args", [])])
        state = container.get("State")
        status = state.get("Status", "running") if state is not None else "running"
        started = _started(state.get("StartedAt") if state is not None else container.get("Created"))
        ports = _ports((container.get("NetworkSettings") or {}).get("Ports"))
        image = config.get("Image", "")
    if LABEL_COMMAND in labels:
        command = labels[LABEL_COMMAND]
    return Process(
        id=container["Id"][:12],
        app=labels.get(LABEL_APP, ""),
        name=labels.get(LABEL_TYPE, ""),
        release=labels.get(LABEL_RELEASE, ""),
        command=command,
        image=image,
        host="127.0.0.1",
        ports=ports,
        started=started,
        status=status,
    )


class LocalProcesses:
    def __init__(
        self, docker: Docker, apps: LocalApps, rack: str, runner: Runner, releases: ReleasesAPI | None = None
    ) -> None:
        self.docker = docker
        self.runner = runner
        """This process's runner: its token is on the interactive one-offs (and sandboxes) it holds."""
        self.apps = apps
        self.rack = rack
        self.network = f"convox-{rack}"  # the rack's network, as formation names it: TYPE.APP resolves there
        self._releases = releases
        self.sampler = Sampler(docker)
        self.shells: dict[str, bool] = {}
        self.image_configs: dict[str, ImageConfig] = {}
        self.network_seen = False
        self.sandboxes = Sandboxes(docker, rack, self.network, apps, runner)
        self.volumes = Volumes(docker, rack)
        self.swept = 0.0
        self.receipts = Receipts(apps.state)
        self.execs = ExecRecords(apps.state, runner)
        """The execs this process holds, on record (an exec whose holder died is ended by the reaper)."""
        self.ends: asyncio.Task[None] | None = None
        self.removals: dict[str, asyncio.Task[None]] = {}
        """One-offs that have ended (or are ending), removed once the logs collector has read them."""

    @property
    def releases(self) -> ReleasesAPI:
        if self._releases is None:
            from shared.provider.local.releases import LocalReleases

            self._releases = LocalReleases(self.apps.state, self.apps)
        return self._releases

    def _labels(self, app: str) -> dict[str, str]:
        return {LABEL_RACK: self.rack, LABEL_APP: app}

    # ---- one-off processes -----------------------------------------------------------------------------------

    async def _release(self, app: str, release_id: str) -> Release:
        if not release_id:
            release_id = (await self.apps.get(app)).release
            if not release_id:
                raise BadRequest(f"app {app} has no release yet: deploy it first")
        return await self.releases.get(app, release_id)

    async def resolve(self, app: str, options: ProcessRunOptions) -> ProcessRunOptions:
        """What a one-off process of ``options.service`` runs: the release's image of that process type with
        the release's environment (the manifest's defaults under the app's own), ``options.environment`` on top.
        Options that name an image already are returned as they are (provider-level tests run any image)."""
        return (await self._resolved(app, options))[0]

    async def _resolved(self, app: str, options: ProcessRunOptions) -> tuple[ProcessRunOptions, list[Volume]]:
        """:meth:`resolve`, and the volumes of the process type (a one-off mounts them as its type's
        processes do)."""
        if options.image:
            return options, []
        release = await self._release(app, options.release)
        if not release.manifest:
            raise BadRequest(f"release {release.id} has no build to run")
        manifest = resolve_manifest(Manifest.model_validate_json(release.manifest), release.env)
        service = manifest.service(options.service)
        if service.image:
            image = service.image
        elif release.build:
            image = image_name(self.rack, app, options.service, release.build)
        else:
            raise BadRequest(f"release {release.id} has no build for {options.service}")
        environment = manifest.service_environment(options.service, release.env, app)
        if service.port is not None:
            environment.setdefault("PORT", str(service.port))
        environment.update(options.environment)
        command = options.command
        if not command and service.command:
            command = ["sh", "-c", service.command] if isinstance(service.command, str) else service.command
        memory = options.memory or service.scale.memory
        resolved = options.model_copy(
            update={
                "image": image,
                "release": release.id,
                "environment": environment,
                "command": command,
                "memory": memory,
            }
        )
        return resolved, service.volumes

    async def _argv(self, image: str, command: list[str]) -> list[str]:
        """The full argv a container of ``image`` runs: the image's entrypoint, then the command or its CMD."""
        config = self.image_configs.get(image)
        if config is None:
            config = (await self.docker.inspect_image(image)).get("Config") or {}
            if image.startswith("convox/"):  # the rack's own tags name one build each: they never change
                self.image_configs[image] = config
        argv = [*(config.get("Entrypoint") or []), *(command or config.get("Cmd") or [])]
        if not argv:
            raise BadRequest(f"image {image} has no command to run: give one")
        return argv

    async def _config(
        self, app: str, options: ProcessRunOptions, time_limit: float | None, interactive: bool
    ) -> tuple[dict[str, Any], list[str]]:
        volumes: list[Volume] = []
        if options.image:
            await self.apps.get(app)
        else:
            options, volumes = await self._resolved(app, options)
        argv, network = await asyncio.gather(self._argv(options.image, options.command), self._network())
        labels = {
            **({LABEL_TIMER: options.timer} if options.timer else {}),
            **self._labels(app),
            LABEL_TYPE: options.service,
            LABEL_ONEOFF: "true",
            LABEL_COMMAND: display(options.command or argv),
        }
        if options.release:
            labels[LABEL_RELEASE] = options.release
        if interactive:  # its stream enforces its time limit; the owner ends it once its runner is dead
            labels[LABEL_INTERACTIVE] = "true"
            labels[LABEL_RUNNER] = await self.runner.holding()
        elif time_limit:
            labels[LABEL_DEADLINE] = str(int(time.time() + time_limit))
        host: dict[str, Any] = {"Init": True}
        if options.memory:
            host["Memory"] = host["MemorySwap"] = options.memory * MB
        if network:
            host["NetworkMode"] = self.network
        if volumes:
            host["Mounts"] = await self.volumes.mounts(app, options.service, volumes)
        config: dict[str, Any] = {
            "Image": options.image,
            "Env": [f"{key}={value}" for key, value in sorted(options.environment.items())],
            "Labels": labels,
            "HostConfig": host,
        }
        return config, argv

    async def _network(self) -> bool:
        """Whether the rack's network exists (formation makes it with the first roll-out; it stays)."""
        if self.network_seen:
            return True
        if not await self.docker.has_network(self.network):
            return False
        self.network_seen = True
        return True

    def _name(self, app: str, service: str) -> str:
        return f"{self.rack}-{app}-{service}-run-{secrets.token_hex(3)}"

    async def run(self, app: str, options: ProcessRunOptions, time_limit: float | None = None) -> Process:
        config, argv = await self._config(app, options, time_limit, interactive=False)
        config["Entrypoint"], config["Cmd"] = argv[:1], argv[1:]
        self._ensure_ends()  # its end is seen however soon it comes: the watch starts from now
        with log.measure("process.run", app=app, service=options.service) as fields:
            created = await self.docker.create_container(config, self._name(app, options.service))
            container_id = str(created["Id"])
            fields["id"] = container_id[:12]
            try:
                await self.docker.start_process(container_id)
            except BaseException:
                with contextlib.suppress(RackError):
                    await self.docker.remove(container_id)
                raise
        try:
            process = to_process(await self.docker.inspect(container_id))
        except NotFound:  # it ended already and was removed
            made: ContainerConfig = {"Image": config["Image"], "Labels": config["Labels"]}
            process = to_process({"Id": container_id, "Config": made, "State": {"Status": "exited"}})
        return process  # its time limit is the owner's (:meth:`loops`): a label, so that no restart loses it

    async def run_interactive(
        self, app: str, options: ProcessRunOptions, time_limit: float | None = None
    ) -> AttachedRun:
        config, argv = await self._config(app, options, time_limit, interactive=True)
        on_network = config["HostConfig"].get("NetworkMode") == self.network
        return AttachedRun(
            self.docker,
            config,
            argv,
            name=self._name(app, options.service),
            shells=self.shells,
            sandboxes=self.sandboxes if on_network else None,
            app=app,
            remove=self.remove_when_read,
        )

    # ---- exec ------------------------------------------------------------------------------------------------

    async def exec(self, app: str, pid: str, command: list[str]) -> ExecStream:
        if not command:
            raise BadRequest("no command to run")
        container = await self._container(app, pid)
        if not (container.get("State") or {}).get("Running"):
            raise Conflict(f"process {pid} is not running")
        return ExecStream(self.docker, container["Id"], command, watch=self.execs)

    # ---- listing ----------------------------------------------------------------------------------------------

    metrics_interval = 1.0
    """The Engine's stats are read once a second (as ``docker stats`` shows them)."""

    async def metrics(
        self, app: str, service: str | None = None, release: str | None = None
    ) -> AsyncIterator[list[Process]]:
        while True:
            started = time.monotonic()
            yield await self.list(app, service, release)
            await asyncio.sleep(max(0.0, self.metrics_interval - (time.monotonic() - started)))

    async def list(
        self, app: str, service: str | None = None, release: str | None = None, stats: bool = True
    ) -> list[Process]:
        await self.apps.get(app)
        labels = self._labels(app)
        if service:
            labels[LABEL_TYPE] = service
        if release:
            labels[LABEL_RELEASE] = release
        containers = await self.docker.containers(labels)
        # the list's entries carry the creation time; a process's last start (after a restart by the engine's
        # restart policy) and its exposed ports are in its inspect document
        inspected = await asyncio.gather(*(self.docker.inspect(c["Id"]) for c in containers), return_exceptions=True)
        documents = [d if isinstance(d, dict) else c for c, d in zip(containers, inspected, strict=True)]
        processes = sorted(
            (to_process(c) for c in documents),
            key=lambda p: (p.name, p.started.timestamp() if p.started else 0.0, p.id),
        )
        await self._balanced(app, processes, documents)
        if stats and processes:
            ids = {c["Id"][:12]: c["Id"] for c in containers}
            figures = await self.sampler.figures([ids[p.id] for p in processes])
            for process in processes:
                process.cpu, process.memory = figures.get(ids[process.id], (0.0, 0.0))
        return processes

    async def _container(self, app: str, pid: str) -> ContainerInfo:
        await self.apps.get(app)
        if not PID_RE.fullmatch(pid):
            raise NotFound(f"no such process: {pid}")
        try:
            container = await self.docker.inspect(pid)
        except (NotFound, Conflict, BadRequest):  # unknown, or a prefix of several ids
            raise NotFound(f"no such process: {pid}") from None
        labels = (container.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_RACK) != self.rack or labels.get(LABEL_APP) != app:
            raise NotFound(f"no such process: {pid}")
        return container

    async def _balanced(
        self, app: str, processes: builtins.list[Process], documents: builtins.list[ContainerSummary | ContainerInfo]
    ) -> None:
        """A port that a balancer listener serves is shown as ``PORT:CONTAINER_PORT`` (``"80:3000"``), as
        Convox shows it; one-off processes are no balancer's backends and keep their container ports."""
        sql = "SELECT service, container_port, port FROM listeners WHERE app = ?"
        rows = await self.apps.state.fetch_all(sql, (app,))
        served = {(r["service"], str(r["container_port"])): f"{r['port']}:{r['container_port']}" for r in rows}
        if not served:
            return
        labels = [labels_of(d) for d in documents]
        oneoff = {d["Id"][:12] for d, of in zip(documents, labels, strict=True) if LABEL_ONEOFF in of}
        for process in processes:
            if process.id not in oneoff:
                process.ports = sorted(served.get((process.name, port), port) for port in process.ports)

    async def get(self, app: str, pid: str) -> Process:
        container = await self._container(app, pid)
        process = to_process(container)
        await self._balanced(app, [process], [container])
        if (container.get("State") or {}).get("Running"):
            figures = await self.sampler.figures([container["Id"]])
            process.cpu, process.memory = figures.get(container["Id"], (0.0, 0.0))
        return process

    async def stop(self, app: str, pid: str) -> None:
        container = await self._container(app, pid)
        with log.measure("process.stop", app=app, id=container["Id"][:12]):
            await self._stop(container["Id"])

    async def _stop(self, container_id: str) -> None:
        """SIGTERM (to the command itself: the container's init passes it on), SIGKILL after a grace, removed
        (a one-off once its log is read)."""
        try:
            info = await self.docker.inspect(container_id)
        except NotFound:
            return
        if ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_ONEOFF) != "true":
            with contextlib.suppress(NotFound, Conflict):  # a process of the formation: stopped and removed
                await self.docker.stop(container_id, grace=STOP_GRACE)
            return
        try:  # a one-off: stopped, and removed once its log is read
            await self.docker.stop_process(container_id, grace=STOP_GRACE)
        except NotFound:
            return
        except Conflict:  # being removed already, or not running
            pass
        removal = self.removals.get(container_id)
        if removal is not None:
            await asyncio.shield(removal)
        else:
            await self._remove_read(container_id)

    # ---- removing ended one-offs, once their output is collected ------------------------------------------

    def _ensure_ends(self) -> None:
        if self.ends is None or self.ends.done():
            self.ends = asyncio.create_task(self._watch_ends(time.time()), name="one-off-ends")

    async def _watch_ends(self, since: float) -> None:
        """Remove each detached one-off that ends (once its log is read), from the Engine's events (taken
        again from where they were after a drop; the owner's reaper finds what they miss)."""
        filters = {
            "type": ["container"],
            "event": ["die"],
            "label": [f"{LABEL_RACK}={self.rack}", f"{LABEL_ONEOFF}=true"],
        }
        while True:
            try:
                async for event in self.docker.events(filters, since=f"{since:.9f}"):
                    since = max(since, int(event.get("timeNano") or 0) / 1e9)
                    actor = event.get("Actor") or {}
                    if (actor.get("Attributes") or {}).get(LABEL_INTERACTIVE) != "true" and actor.get("ID"):
                        self.remove_when_read(str(actor["ID"]))
            except RackError:
                await asyncio.sleep(1.0)

    def remove_when_read(self, container_id: str, wait_exit: bool = False) -> None:
        """Remove the one-off ``container_id`` once it has ended (``wait_exit``: wait for that) and the logs
        collector has read its log to the end: however short its life, its output reaches the history."""
        if container_id in self.removals:
            return
        task = asyncio.create_task(self._remove_read(container_id, wait_exit), name=f"remove {container_id[:12]}")
        self.removals[container_id] = task
        task.add_done_callback(lambda _: self.removals.pop(container_id, None))

    async def _remove_read(self, container_id: str, wait_exit: bool = False) -> None:
        try:
            if wait_exit:
                await self.docker.wait_not_running(container_id)
            await self.docker.inspect(container_id)  # one removed already (NotFound) has nothing to wait for
            await self.receipts.wait(container_id)
            with contextlib.suppress(NotFound, Conflict):
                await self.docker.remove(container_id)
            await self.receipts.forget(container_id)
        except NotFound:
            await self.receipts.forget(container_id)
        except RackError as exc:  # the reaper's next round finds it ended and removes it
            log.error("process.remove", id=container_id[:12], message=exc.message)

    # ---- under the owner: one-offs whose service died, time limits, sandboxes ----------------------------------

    def loops(self) -> builtins.list[Loop]:
        """The owner's work (:meth:`shared.provider.contract.Provider.workers`): at its start one round of the
        reaper and a sweep (what a restart cut short), then the reaper every :data:`REAP_SECONDS`; and the
        removal of detached one-offs as they end."""
        return [
            Loop("processes.reaper", self._reap_forever, start=self._start),
            Loop("processes.ends", self._watch_ends_from_now),
        ]

    async def _start(self) -> None:
        await self.reap()
        await self.sweep()

    async def _watch_ends_from_now(self) -> None:
        await self._watch_ends(time.time())

    async def sweep(self) -> None:
        """Bring the rack's sandboxes in line (see :meth:`Sandboxes.sweep`)."""
        self.swept = time.monotonic()
        await self.sandboxes.sweep({app.name for app in await self.apps.list()})

    async def reap(self) -> None:
        """Stop the one-offs past their deadline and the interactive ones whose runner is dead (their stream
        is gone); remove those that ended while nothing was there to remove them."""
        now = time.time()
        found = await self.docker.containers({LABEL_RACK: self.rack, LABEL_ONEOFF: "true"}, all=True)
        runners: dict[str, str] = {}
        for container in found:
            labels = container.get("Labels") or {}
            if labels.get(LABEL_INTERACTIVE) == "true":
                token = str(labels.get(LABEL_RUNNER, ""))
                runners[container["Id"]] = token if TOKEN.fullmatch(token) else ""  # no token: nothing holds it
        gone = await dead(self.runner.root, set(runners.values()))
        doomed = []
        for container in found:
            labels = container.get("Labels") or {}
            orphan = container["Id"] in runners and runners[container["Id"]] in gone
            if container.get("State") in ("exited", "dead") and (container["Id"] not in runners or orphan):
                self.remove_when_read(container["Id"])  # ended while nobody was there to remove it
                continue
            deadline = labels.get(LABEL_DEADLINE, "")
            if orphan or (deadline.isdigit() and int(deadline) <= now):
                doomed.append(container["Id"])
        for container_id in doomed:
            runner = runners.get(container_id)
            why = {"reason": "time limit"} if runner is None else {"reason": "runner dead", "runner": runner or "none"}
            log.log("process.reap", id=container_id[:12], **why)
        await asyncio.gather(*(self._stop(c) for c in doomed), return_exceptions=True)
        await self.execs.reap(self.docker)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_SECONDS)
            try:
                await self.reap()
                if time.monotonic() - self.swept > SWEEP_SECONDS:
                    await self.sweep()
            except Exception as exc:  # the next round tries again: time limits must go on being enforced
                log.error("process.reap", message=exc.message if isinstance(exc, RackError) else type(exc).__name__)

    async def close(self) -> None:
        """Stop the background work of this process (stats sampling, the removal of ended one-offs)."""
        await self.sampler.close()
        await self.sandboxes.close()
        if self.ends is not None:
            self.ends.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ends
            self.ends = None
        removals = list(self.removals.values())
        for task in removals:
            task.cancel()
        await asyncio.gather(*removals, return_exceptions=True)
