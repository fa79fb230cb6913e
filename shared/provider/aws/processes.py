"""Processes on AWS: the ECS tasks of an app, found by their tags (never ``list_tasks(serviceName)``).

A task is the app's when it carries the tags ``convox.rack`` and ``convox.app`` (services propagate them
from their task definitions; one-offs get them from RunTask). A pid is the last 12 characters of the task
id. One-offs are RunTask with the command and environment as overrides; a time limit is a tag
(``convox.deadline``) on the task itself, so that the reaper (a loop of the workers, :meth:`AwsProcesses.loops`)
enforces it also after a restart.

exec, attached runs and CPU/MEM go to the Docker Engine of the task's container instance over mutual TLS
(:mod:`.engines`; EC2 launch type only). An attached run is, as Convox did it, a RunTask whose container is
kept alive, the command exec'd into it, and StopTask at the end; while its stream lives it renews a lease
(its ``convox.deadline`` tag, :data:`LEASE` seconds ahead), so a stream that dies with its rack is stopped
by the reaper within a lease.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from shared.errors import BadRequest, NotFound, RackError, Unavailable
from shared.logfmt import Logger
from shared.manifest import ManifestError
from shared.models import Process, ProcessRunOptions
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.clients import Clients, translated
from shared.provider.aws.engines import Engines
from shared.provider.aws.formation import AwsFormation, Desired, family, manifest_of, run_family
from shared.provider.aws.releases import AwsReleases
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.engine.exec import ExecStream
from shared.provider.workers import Loop
from shared.stream import Channel, ProcessStream, Stdio, Terminal

log = Logger("processes")
TAG_TIMER = "convox.timer"
"""The timer a one-off task runs for."""
TAG_ATTACHED = "convox.attached"
"""On the task of an attached run (its command runs as an exec into the kept-alive container)."""
KEEP_ALIVE = ["sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait"]
LEASE = 60.0
"""Seconds an attached run's task outlives its stream's last sign of life (renewed every LEASE / 4)."""
STATS_WITHIN = 3.0
"""Seconds a listing waits for one instance engine's figures."""
STATS_RETRY = 60.0
"""Seconds an engine whose figures failed is left out of listings (its processes show 0)."""
STATUS = {"PROVISIONING": "starting", "PENDING": "starting", "ACTIVATING": "starting", "RUNNING": "running"}


def pid_of(task_arn: str) -> str:
    """The pid of a task: the last 12 characters of its id (Convox's ``arnToPid``)."""
    return task_arn.rsplit("/", 1)[-1].replace("-", "")[-12:]


def ports_of(task: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """``HOST:CONTAINER`` from the task's network bindings (bridge mode: the host port ECS picked), else the
    definition's container ports (before the agent has bound them; moto never reports bindings)."""
    bindings = [b for c in task.get("containers") or [] for b in c.get("networkBindings") or []]
    if bindings:
        return [f"{b['hostPort']}:{b['containerPort']}" for b in bindings if "hostPort" in b and "containerPort" in b]
    return [str(p["containerPort"]) for p in container.get("portMappings", []) if "containerPort" in p]


def tags_of(task: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in task.get("tags", []) if "key" in t}


class AwsProcesses:
    def __init__(
        self,
        clients: Clients,
        apps: AwsApps,
        releases: AwsReleases,
        formation: AwsFormation,
        rack: str,
        settings: AwsProviderSettings,
    ) -> None:
        self.clients = clients
        self.apps = apps
        self.releases = releases
        self.formation = formation
        self.rack = rack
        self.settings = settings
        self.cluster = formation.cluster
        self._definitions: dict[str, dict[str, Any]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.engines = Engines(clients, self.cluster, settings.stack or rack)
        self._stats_down: dict[str, float] = {}
        """Engines whose stats failed, until when they are not asked again."""
        self.placement_timeout = 300.0
        """Seconds an attached run waits for its task's container to run on its instance (Convox: 300)."""

    async def ecs(self) -> Any:
        return await self.clients.get("ecs")

    # ---- reading tasks -------------------------------------------------------------------------------

    async def _tasks(self) -> list[dict[str, Any]]:
        """Every running (or starting) task of the cluster, described with its tags, in batches of 100."""
        ecs = await self.ecs()
        arns: list[str] = []
        with translated("cannot list the rack's tasks"):
            paginator = ecs.get_paginator("list_tasks")
            async for page in paginator.paginate(cluster=self.cluster, desiredStatus="RUNNING"):
                arns.extend(page.get("taskArns", []))
            tasks: list[dict[str, Any]] = []
            for start in range(0, len(arns), 100):
                described = await ecs.describe_tasks(
                    cluster=self.cluster, tasks=arns[start : start + 100], include=["TAGS"]
                )
                tasks.extend(described.get("tasks", []))
        return [
            t
            for t in tasks
            if t.get("lastStatus") not in {"STOPPED", "DEPROVISIONING", "STOPPING"}
            and t.get("desiredStatus") == "RUNNING"
        ]

    def _is_apps(self, task: dict[str, Any], app: str) -> bool:
        tags = tags_of(task)
        if tags.get("convox.rack") == self.rack and tags.get("convox.app") == app:
            return True
        return str(task.get("group", "")).startswith(f"service:{family(self.rack, app, '')}")

    async def _definition(self, arn: str) -> dict[str, Any]:
        definition = self._definitions.get(arn)
        if definition is None:
            ecs = await self.ecs()
            with translated(f"no such task definition: {arn}"):
                definition = (await ecs.describe_task_definition(taskDefinition=arn))["taskDefinition"]
            self._definitions[arn] = definition
        return definition

    async def _process(self, app: str, task: dict[str, Any], hosts: dict[str, str] | None = None) -> Process:
        tags = tags_of(task)
        definition = await self._definition(task["taskDefinitionArn"])
        container = (definition.get("containerDefinitions") or [{}])[0]
        labels = container.get("dockerLabels") or {}
        command = container.get("command") or []
        for override in (task.get("overrides") or {}).get("containerOverrides", []):
            if override.get("command"):
                command = override["command"]
        started = task.get("startedAt") or tags.get("convox.started") or None
        if isinstance(started, str):
            started = datetime.fromisoformat(started)
        return Process(
            id=pid_of(task["taskArn"]),
            app=app,
            name=tags.get("convox.type") or labels.get("convox.type") or container.get("name", ""),
            release=tags.get("convox.release") or labels.get("convox.release", ""),
            command=" ".join(command),
            image=container.get("image", ""),
            ports=ports_of(task, container),
            host=(hosts or {}).get(str(task.get("containerInstanceArn", "")), ""),
            started=started,
            status=STATUS.get(str(task.get("lastStatus")), str(task.get("lastStatus", "")).lower()),
        )

    async def _app_tasks(self, app: str) -> list[dict[str, Any]]:
        await self.apps.item(app)
        return [t for t in await self._tasks() if self._is_apps(t, app)]

    async def list(
        self, app: str, service: str | None = None, release: str | None = None, stats: bool = True
    ) -> list[Process]:
        tasks = await self._app_tasks(app)
        hosts = await self._hosts(tasks)
        pairs = [(await self._process(app, t, hosts), t) for t in tasks]
        kept = [
            (p, t) for p, t in pairs if (not service or p.name == service) and (not release or p.release == release)
        ]
        if stats and kept:
            await self._figures(kept)
        return sorted(
            (p for p, _ in kept),
            key=lambda p: (p.name, p.started or datetime.min.replace(tzinfo=UTC), p.id),
        )

    async def _figures(self, pairs: builtins.list[tuple[Process, dict[str, Any]]]) -> None:
        """CPU and memory of each process from its instance's engine (EC2 tasks; others keep 0): the engines'
        one-shot stats, computed as ``docker stats`` does (:mod:`shared.provider.engine.stats`). An engine
        that cannot be reached leaves its processes at 0 rather than failing the listing."""
        placed = [(p, t) for p, t in pairs if t.get("launchType") != "FARGATE" and t.get("containerInstanceArn")]
        addresses: dict[str, str] = {}
        with contextlib.suppress(RackError):
            addresses = await self.engines.addresses([str(t["containerInstanceArn"]) for _, t in placed])
        by_address: dict[str, builtins.list[tuple[Process, dict[str, Any]]]] = {}
        for process, task in placed:
            address = addresses.get(str(task["containerInstanceArn"]))
            if address:
                by_address.setdefault(address, []).append((process, task))

        async def one(address: str, group: builtins.list[tuple[Process, dict[str, Any]]]) -> None:
            if self._stats_down.get(address, 0.0) > time.monotonic():
                return
            try:
                async with asyncio.timeout(STATS_WITHIN):
                    engine = await self.engines.engine(address)
                    ids = [await self.engines.container_on(engine, t, p.id) for p, t in group]
                    figures = await (await self.engines.sampler(address)).figures(ids)
            except (RackError, TimeoutError) as exc:
                # an engine that does not answer is left alone for a while: listings stay fast
                self._stats_down[address] = time.monotonic() + STATS_RETRY
                log.error("process.stats", address=address, error=getattr(exc, "message", "") or "timed out")
                return
            for (process, _), container_id in zip(group, ids, strict=True):
                if container_id in figures:
                    process.cpu, process.memory = figures[container_id]

        await asyncio.gather(*(one(a, g) for a, g in by_address.items()))

    async def _task(self, app: str, pid: str) -> dict[str, Any]:
        if pid:
            for task in await self._app_tasks(app):
                if pid_of(task["taskArn"]) == pid:
                    return task
        raise NotFound(f"no such process: {pid}")

    async def get(self, app: str, pid: str) -> Process:
        task = await self._task(app, pid)
        return await self._process(app, task, await self._hosts([task]))

    async def _hosts(self, tasks: builtins.list[dict[str, Any]]) -> dict[str, str]:
        """The private address of each task's container instance (none for FARGATE tasks); a listing never
        fails for want of it."""
        arns = [str(t["containerInstanceArn"]) for t in tasks if t.get("containerInstanceArn")]
        try:
            return await self.engines.hosts(arns)
        except RackError as exc:
            log.error("process.hosts", error=exc.message)
            return {}

    async def stop(self, app: str, pid: str) -> None:
        task = await self._task(app, pid)
        ecs = await self.ecs()
        with translated(f"no such process: {pid}"):
            await ecs.stop_task(cluster=self.cluster, task=task["taskArn"], reason="convox ps stop")

    # ---- one-offs ------------------------------------------------------------------------------------

    async def _want(self, app: str, options: ProcessRunOptions) -> tuple[str, Desired]:
        """The release and what a one-off of ``options.service`` runs."""
        item = await self.apps.item(app)
        release_id = options.release or item.get("release", "") or item.get("latest", "")
        if not release_id:
            if not options.image:
                raise BadRequest(f"app {app} has no release yet: deploy it first")
            return "", Desired(
                options.service,
                options.image,
                1,
                options.memory or 256,
                0,
                dict(options.environment),
                options.command or None,
                None,
            )
        release = await self.releases.get(app, release_id)
        try:
            wanted = {w.service: w for w in await self.formation.desired(release, item.get("formation", {}))}
        except BadRequest:
            if not options.image:
                raise
            wanted = {}
        want = wanted.get(options.service)
        if want is None:
            if not options.image:
                if options.service not in manifest_of(release).services:
                    raise NotFound(f"no such process type: {options.service}")
                raise ManifestError(f"process type {options.service} cannot run")
            want = Desired(options.service, options.image, 1, 256, 0, {}, None, None)
        want.env = {**want.env, **options.environment}
        if options.image:
            want.image = options.image
        if options.command:
            want.command = options.command
        if options.memory:
            want.memory = options.memory
        return release_id, want

    async def run(self, app: str, options: ProcessRunOptions, time_limit: float | None = None) -> Process:
        return await self._process(app, await self._run_task(app, options, time_limit))

    async def _run_task(
        self, app: str, options: ProcessRunOptions, time_limit: float | None, attached: bool = False
    ) -> dict[str, Any]:
        release_id, want = await self._want(app, options)
        ecs = await self.ecs()
        from shared.models import Release

        release = Release(id=release_id, app=app)
        definition = self.formation.task_definition(app, release, want)
        definition["family"] = run_family(self.rack, app, want.service)
        with translated(f"cannot register a task definition for {app}/{want.service}"):
            registered = await ecs.register_task_definition(**definition)
        tags = [
            *self.formation.tags(app, want.service, release_id),
            {"key": "convox.started", "value": datetime.now(UTC).isoformat()},
            *([{"key": TAG_TIMER, "value": options.timer}] if options.timer else []),
            *([{"key": TAG_ATTACHED, "value": "1"}] if attached else []),
        ]
        if time_limit is not None:
            tags.append({"key": "convox.deadline", "value": f"{time.time() + time_limit:.3f}"})
        with translated(f"cannot run a process of {app}"):
            response = await ecs.run_task(
                cluster=self.cluster,
                taskDefinition=registered["taskDefinition"]["taskDefinitionArn"],
                count=1,
                startedBy=f"convox.{app}",
                launchType=self.settings.launch_type,
                tags=tags,
                **self.formation.network(),
            )
        if response.get("failures") or not response.get("tasks"):
            reasons = ", ".join(str(f.get("reason", "")) for f in response.get("failures", [])) or "no task"
            raise Unavailable(f"ECS could not place a process of {app}: {reasons}")
        task = response["tasks"][0]
        log.log("process.run", app=app, service=want.service, pid=pid_of(task["taskArn"]), attached=attached)
        return dict(task)

    async def run_interactive(
        self, app: str, options: ProcessRunOptions, time_limit: float | None = None
    ) -> ProcessStream:
        """A RunTask whose container is kept alive, the command exec'd into it once it runs on its instance
        (the release's environment is the container's), StopTask when the stream ends."""
        _, want = await self._want(app, options)
        argv = options.command or want.command
        if not argv:
            raise BadRequest(f"process type {options.service} has no command to run attached: name one")
        if self.settings.launch_type == "FARGATE":
            raise BadRequest(
                "attached runs need the EC2 launch type (the rack reaches the container through its instance's "
                "engine); this rack runs on the FARGATE launch type: use convox run --detach"
            )
        kept_alive = options.model_copy(update={"command": KEEP_ALIVE})
        return AttachedTask(self, app, kept_alive, list(argv), time_limit)

    async def exec(self, app: str, pid: str, command: builtins.list[str]) -> ProcessStream:
        if not command:
            raise BadRequest("exec needs a command")
        task = await self._task(app, pid)
        engine, container_id = await self.engines.container(task, pid)
        return ExecStream(engine, container_id, command)

    metrics_interval = 1.0
    """The instances' engines are asked once a second (as ``docker stats`` shows them)."""

    async def metrics(
        self, app: str, service: str | None = None, release: str | None = None
    ) -> AsyncIterator[builtins.list[Process]]:
        while True:
            started = time.monotonic()
            yield await self.list(app, service, release)
            await asyncio.sleep(max(0.0, self.metrics_interval - (time.monotonic() - started)))

    async def _placed(self, task_arn: str) -> dict[str, Any]:
        """The task once its container runs on its instance (the agent has started it)."""
        ecs = await self.ecs()
        pid = pid_of(task_arn)
        delay = 0.05
        async with asyncio.timeout(self.placement_timeout):
            while True:
                with translated(f"no such process: {pid}"):
                    described = await ecs.describe_tasks(cluster=self.cluster, tasks=[task_arn], include=["TAGS"])
                task: dict[str, Any] = (described.get("tasks") or [{}])[0]
                if task.get("lastStatus") in {"STOPPED", "DEPROVISIONING", "STOPPING"}:
                    raise Unavailable(f"process {pid} stopped before it started: {task.get('stoppedReason', '')}")
                if task.get("containerInstanceArn"):
                    try:
                        await self.engines.container(task, pid)
                        return task
                    except NotFound:
                        pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _renew(self, task_arn: str, until: float | None) -> None:
        """Keep an attached run's task alive while its stream lives: its deadline, LEASE seconds ahead."""
        ecs = await self.ecs()
        while True:
            deadline = time.time() + LEASE
            if until is not None:
                deadline = min(deadline, until)
            with contextlib.suppress(RackError), translated("cannot renew an attached run"):
                await ecs.tag_resource(
                    resourceArn=task_arn, tags=[{"key": "convox.deadline", "value": f"{deadline:.3f}"}]
                )
            await asyncio.sleep(LEASE / 4)

    async def _stop_task(self, task_arn: str, reason: str) -> None:
        ecs = await self.ecs()
        with contextlib.suppress(RackError), translated("no such process"):
            await ecs.stop_task(cluster=self.cluster, task=task_arn, reason=reason)

    # ---- the reaper ----------------------------------------------------------------------------------

    async def reap(self) -> int:
        """Stop every one-off past its deadline; returns how many."""
        now = time.time()
        ecs = await self.ecs()
        stopped = 0
        for task in await self._tasks():
            tags = tags_of(task)
            if tags.get("convox.rack") != self.rack or "convox.deadline" not in tags:
                continue
            with contextlib.suppress(ValueError):
                if float(tags["convox.deadline"]) <= now:
                    with contextlib.suppress(NotFound), translated("no such process"):
                        await ecs.stop_task(cluster=self.cluster, task=task["taskArn"], reason="time limit")
                    stopped += 1
        return stopped

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.reap()
            except Exception as exc:  # the reaper survives any error, and says so
                log.error("process.reap", error=str(exc))
            await asyncio.sleep(self.settings.reaper_interval)

    def loops(self) -> builtins.list[Loop]:
        """The reaper of one-off time limits, under :meth:`AwsProvider.workers` (deadlines are tags: nothing
        is lost on a restart). An attached run whose stream's process died is one of them: its lease (its
        deadline, renewed by that process) runs out."""
        return [Loop("processes.reaper", self._reap_forever)]

    async def forget(self, app: str) -> None:
        """A deleted app's tasks are stopped, and its one-off task definitions deregistered."""
        ecs = await self.ecs()
        for task in await self._tasks():
            if self._is_apps(task, app):
                with contextlib.suppress(NotFound), translated("no such process"):
                    await ecs.stop_task(cluster=self.cluster, task=task["taskArn"], reason="app deleted")

    async def close(self) -> None:
        await self.engines.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None


class AttachedTask:
    """An attached ``convox run`` on ECS (a :class:`~shared.stream.ProcessStream`): at start a RunTask of the
    kept-alive container (with a lease), then, once the container runs on its instance, the command exec'd
    into it; at close the exec ends (hangup or kill, as every exec) and the task is stopped."""

    def __init__(
        self,
        processes: AwsProcesses,
        app: str,
        options: ProcessRunOptions,
        argv: builtins.list[str],
        limit: float | None,
    ) -> None:
        self.processes = processes
        self.app = app
        self.options = options
        self.argv = argv
        self.limit = limit
        self.task_arn = ""
        self.exec: ExecStream | None = None
        self.lease: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self, terminal: Terminal) -> None:
        until = time.time() + self.limit if self.limit is not None else None
        lease = min(LEASE, self.limit) if self.limit is not None else LEASE
        self.task_arn = str((await self.processes._run_task(self.app, self.options, lease, attached=True))["taskArn"])
        self.lease = asyncio.create_task(self.processes._renew(self.task_arn, until))
        task = await self.processes._placed(self.task_arn)
        engine, container_id = await self.processes.engines.container(task, pid_of(self.task_arn))
        self.exec = ExecStream(engine, container_id, self.argv)
        await self.exec.start(terminal)

    def output(self) -> AsyncIterator[tuple[Channel, bytes | memoryview]]:
        if self.exec is None:
            raise RuntimeError("the process has not started")
        return self.exec.output()

    async def write(self, data: bytes | memoryview) -> None:
        if self.exec is not None:
            await self.exec.write(data)

    async def close_stdin(self) -> None:
        if self.exec is not None:
            await self.exec.close_stdin()

    def take_stdio(self) -> Stdio | None:
        return self.exec.take_stdio() if self.exec is not None else None

    async def resize(self, width: int, height: int) -> None:
        if self.exec is not None:
            await self.exec.resize(width, height)

    async def wait(self) -> int:
        if self.exec is None:
            raise RuntimeError("the process has not started")
        return await self.exec.wait()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.exec is not None:
                await self.exec.close()
        finally:
            if self.lease is not None:
                self.lease.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.lease
            if self.task_arn:
                await self.processes._stop_task(self.task_arn, "attached run ended")
