"""Processes on AWS: the ECS tasks of an app, found by their tags (never ``list_tasks(serviceName)``).

A task is the app's when it carries the tags ``convox.rack`` and ``convox.app`` (services propagate them
from their task definitions; one-offs get them from RunTask). A pid is the last 12 characters of the task
id. One-offs are RunTask with the command and environment as overrides; a time limit is a tag
(``convox.deadline``) on the task itself, so that the reaper (a loop of the workers, :meth:`AwsProcesses.loops`)
enforces it also after a restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from shared.errors import BadRequest, NotFound, Unavailable
from shared.logfmt import Logger
from shared.manifest import ManifestError
from shared.models import Process, ProcessRunOptions
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.clients import Clients, translated
from shared.provider.aws.formation import AwsFormation, Desired, family, manifest_of, run_family
from shared.provider.aws.releases import AwsReleases
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.workers import Loop
from shared.stream import ProcessStream

log = Logger("processes")
TAG_TIMER = "convox.timer"
"""The timer a one-off task runs for."""
STATUS = {"PROVISIONING": "starting", "PENDING": "starting", "ACTIVATING": "starting", "RUNNING": "running"}


def pid_of(task_arn: str) -> str:
    """The pid of a task: the last 12 characters of its id (Convox's ``arnToPid``)."""
    return task_arn.rsplit("/", 1)[-1].replace("-", "")[-12:]


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

    async def _process(self, app: str, task: dict[str, Any]) -> Process:
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
            ports=[str(p["containerPort"]) for p in container.get("portMappings", []) if "containerPort" in p],
            started=started,
            status=STATUS.get(str(task.get("lastStatus")), str(task.get("lastStatus", "")).lower()),
        )

    async def _app_tasks(self, app: str) -> list[dict[str, Any]]:
        await self.apps.item(app)
        return [t for t in await self._tasks() if self._is_apps(t, app)]

    async def list(
        self, app: str, service: str | None = None, release: str | None = None, stats: bool = True
    ) -> list[Process]:
        processes = [await self._process(app, t) for t in await self._app_tasks(app)]
        return sorted(
            (p for p in processes if (not service or p.name == service) and (not release or p.release == release)),
            key=lambda p: (p.name, p.started or datetime.min.replace(tzinfo=UTC), p.id),
        )

    async def _task(self, app: str, pid: str) -> dict[str, Any]:
        if pid:
            for task in await self._app_tasks(app):
                if pid_of(task["taskArn"]) == pid:
                    return task
        raise NotFound(f"no such process: {pid}")

    async def get(self, app: str, pid: str) -> Process:
        return await self._process(app, await self._task(app, pid))

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
        log.log("process.run", app=app, service=want.service, pid=pid_of(task["taskArn"]))
        return await self._process(app, task)

    async def run_interactive(
        self, app: str, options: ProcessRunOptions, time_limit: float | None = None
    ) -> ProcessStream:
        await self._want(app, options)
        raise BadRequest(
            "attached runs need the rack's node agent, which the aws provider does not have yet: "
            "use convox run --detach"
        )

    async def exec(self, app: str, pid: str, command: builtins.list[str]) -> ProcessStream:
        await self._task(app, pid)
        raise BadRequest("exec needs the rack's node agent, which the aws provider does not have yet")

    metrics_interval = 60.0
    """CloudWatch's standard resolution for ECS tasks (Container Insights): what a node agent would improve."""

    async def metrics(
        self, app: str, service: str | None = None, release: str | None = None
    ) -> AsyncIterator[builtins.list[Process]]:
        await self.apps.item(app)
        raise BadRequest("live metrics need the rack's node agent, which the aws provider does not have yet")
        yield []  # pragma: no cover - makes this an async generator

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

    async def adopt(self) -> None:
        """Nothing of the processes service's own: the reaper of time limits is a loop of the workers."""
        return None

    def loops(self) -> builtins.list[Loop]:
        """The reaper of one-off time limits, under :meth:`AwsProvider.workers` (deadlines are tags: nothing
        is lost on a restart)."""
        return [Loop("processes.reaper", self._reap_forever)]

    async def forget(self, app: str) -> None:
        """A deleted app's tasks are stopped, and its one-off task definitions deregistered."""
        ecs = await self.ecs()
        for task in await self._tasks():
            if self._is_apps(task, app):
                with contextlib.suppress(NotFound), translated("no such process"):
                    await ecs.stop_task(cluster=self.cluster, task=task["taskArn"], reason="app deleted")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
