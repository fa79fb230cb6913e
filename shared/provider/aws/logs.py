"""Logs on AWS: each app's CloudWatch Logs group, read with FilterLogEvents.

Processes write through the ``awslogs`` driver into streams ``TYPE/TYPE/TASKID``; platform events go to
the stream ``convox/events`` as JSON (release, pid, message). History is FilterLogEvents from ``since``,
paged. Following polls every ``log_poll_interval`` seconds from ``now - log_lookback`` and drops events
already sent by their ``eventId``: a line ingested late (its timestamp older than the last poll) is still
sent once, and none twice. Nothing needs collecting: ECS ships the lines, so the workers' start step
``logs.group`` (:meth:`AwsLogs.ensure_group`, under :meth:`shared.provider.aws.provider.AwsProvider.workers`)
only makes sure that the rack's own group is there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import NotFound
from shared.logfmt import Logger
from shared.logline import EVENT_SERVICE, line_source, wanted
from shared.logstore.settings import LogStoreSettings
from shared.provider.aws.apps import AwsApps, log_group
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.processes import AwsProcesses, pid_of
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.contract import Sink

log = Logger("logs")
EVENTS_STREAM = "convox/events"
PAGE = 10_000
SEEN_MARGIN = 2.0
"""Seconds an event id is remembered beyond the look-back window (clock skew between the rack and AWS)."""


@dataclass(slots=True)
class Line:
    """One rendered line of an app's log (the fields of ``shared.models.LogEntry``)."""

    ms: int
    service: str
    release: str
    pid: str
    text: str

    def render(self) -> bytes:
        """``2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63 text\n`` (see ``LogsAPI``)."""
        stamp = datetime.fromtimestamp(self.ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{stamp} {line_source(self)} {self.text.rstrip(chr(10))}\n".encode("utf-8", "backslashreplace")


def to_ms(moment: datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


class AwsLogs:
    def __init__(
        self, clients: Clients, apps: AwsApps, processes: AwsProcesses, rack: str, settings: AwsProviderSettings
    ) -> None:
        self.clients = clients
        self.apps = apps
        self.processes = processes
        self.rack = rack
        self.settings = settings
        self._releases: dict[str, str] = {}

    async def cw(self) -> Any:
        return await self.clients.get("logs")

    # ---- reading -------------------------------------------------------------------------------------

    async def _streams(self, group: str) -> list[str]:
        cw = await self.cw()
        names: list[str] = []
        with translated(f"no such log group: {group}"):
            paginator = cw.get_paginator("describe_log_streams")
            async for page in paginator.paginate(logGroupName=group):
                names.extend(s["logStreamName"] for s in page.get("logStreams", []))
        return names

    async def _release_of(self, app: str, task_id: str) -> str:
        """The release a task ran (from its tags), remembered; ``""`` once ECS forgot the task."""
        if task_id in self._releases:
            return self._releases[task_id]
        ecs = await self.clients.get("ecs")
        release = ""
        try:
            described = await ecs.describe_tasks(cluster=self.processes.cluster, tasks=[task_id], include=["TAGS"])
            for task in described.get("tasks", []):
                release = {t["key"]: t["value"] for t in task.get("tags", [])}.get("convox.release", "")
        except Exception as exc:
            if not error_code(exc):
                raise
        self._releases[task_id] = release
        return release

    async def _line(self, app: str, event: dict[str, Any]) -> Line:
        stream = str(event.get("logStreamName", ""))
        message = str(event.get("message", ""))
        ms = int(event.get("timestamp", 0))
        if stream == EVENTS_STREAM:
            try:
                data = json.loads(message)
                return Line(
                    ms,
                    str(data.get("service") or EVENT_SERVICE),
                    str(data.get("release", "")),
                    str(data.get("pid", "")),
                    str(data.get("message", "")),
                )
            except (ValueError, AttributeError):
                return Line(ms, EVENT_SERVICE, "", "", message)
        parts = stream.split("/")
        if not app:  # the rack's own group: its API task's supervisor writes ``SERVICE: text`` (see system)
            source, sep, text = message.partition(": ")
            if sep and source and not any(c.isspace() for c in source):
                return Line(ms, source, "", "", text)
            return Line(ms, parts[0], "", "", message)
        if len(parts) == 3:
            service, _, task_id = parts
            return Line(ms, service, await self._release_of(app, task_id), pid_of(task_id), message)
        return Line(ms, parts[0], "", "", message)

    async def _filter(self, group: str, streams: list[str] | None, start: int) -> list[dict[str, Any]]:
        """Every event of ``group`` (of ``streams``, in batches of 100 names) from ``start`` ms, in time order."""
        cw = await self.cw()
        events: list[dict[str, Any]] = []
        batches: list[list[str] | None] = (
            [None] if streams is None else [streams[i : i + 100] for i in range(0, len(streams), 100)]
        )
        for batch in batches:
            kwargs: dict[str, Any] = {"logGroupName": group, "startTime": start, "limit": PAGE}
            if batch is not None:
                kwargs["logStreamNames"] = batch
            while True:
                with translated(f"no such log group: {group}"):
                    response = await cw.filter_log_events(**kwargs)
                events.extend(response.get("events", []))
                token = response.get("nextToken")
                if not token or not response.get("events"):
                    break
                kwargs["nextToken"] = token
        events.sort(key=lambda e: (int(e.get("timestamp", 0)), str(e.get("eventId", ""))))
        return events

    async def _read(
        self,
        app: str,
        group: str,
        streams: list[str] | None,
        since: datetime | None,
        follow: bool,
        service: str,
        pid: str,
        text: str,
    ) -> AsyncIterator[list[bytes]]:
        since_ms = to_ms(since)
        seen: dict[str, int] = {}
        poll_start = int(time.time() * 1000)
        events = await self._filter(group, streams, since_ms)
        batch: list[bytes] = []
        for event in events:
            seen[str(event.get("eventId", ""))] = int(event.get("timestamp", 0))
            line = await self._line(app, event)
            if wanted(line, service, pid, text):
                batch.append(line.render())
        yield batch
        if not follow:
            return
        lookback = int(self.settings.log_lookback * 1000)
        while True:
            await asyncio.sleep(self.settings.log_poll_interval)
            start = max(since_ms, poll_start - lookback)
            poll_start = int(time.time() * 1000)
            if streams is not None and (service or pid):
                streams = await self._selected(group, service, pid)
            batch = []
            for event in await self._filter(group, streams, start):
                event_id = str(event.get("eventId", ""))
                if event_id in seen:
                    continue
                seen[event_id] = int(event.get("timestamp", 0))
                line = await self._line(app, event)
                if wanted(line, service, pid, text):
                    batch.append(line.render())
            forget = start - int(SEEN_MARGIN * 1000)
            for event_id in [k for k, ms in seen.items() if ms < forget]:
                del seen[event_id]
            if batch:
                yield batch

    async def _selected(self, group: str, service: str, pid: str) -> list[str]:
        """The streams holding a process type's or a process's lines, and the platform's events."""
        chosen: list[str] = []
        for name in await self._streams(group):
            if name == EVENTS_STREAM and not pid:
                chosen.append(name)
            parts = name.split("/")
            if len(parts) != 3:
                continue
            if service and parts[0] != service:
                continue
            if pid and pid_of(parts[2]) != pid:
                continue
            chosen.append(name)
        return chosen

    async def app(
        self,
        app: str,
        *,
        since: datetime | None = None,
        follow: bool = True,
        service: str = "",
        pid: str = "",
        filter: str = "",
        sink: Sink | None = None,
    ) -> AsyncIterator[list[bytes]]:
        del sink  # CloudWatch Logs is polled in the stream's own turn: every batch is yielded
        await self.apps.item(app)
        group = log_group(self.apps.state.log_prefix, app)
        streams: list[str] | None = None
        if service or pid:
            streams = await self._selected(group, service, pid)
            if pid and not streams:
                try:
                    await self.processes.get(app, pid)
                except NotFound:
                    raise NotFound(f"no such process: {pid}") from None
        async for batch in self._read(app, group, streams, since, follow, service, pid, filter):
            yield batch

    async def system(
        self, *, since: datetime | None = None, follow: bool = True, service: str = "", filter: str = ""
    ) -> AsyncIterator[list[bytes]]:
        """The rack's group: the output of its API task (stream ``api/api/TASKID``), which is the supervisor's
        lines of every service of the rack, ``SERVICE: text``; each is a line of SERVICE (``service`` picks
        them by it, not by stream), rendered ``SERVICE: text`` as the local rack log's are."""
        group = self.apps.state.log_prefix
        async for batch in self._read("", group, None, since, follow, service, "", filter):
            yield batch

    async def event(self, app: str, message: str, *, release: str = "", pid: str = "", service: str = "convox") -> None:
        cw = await self.cw()
        group = log_group(self.apps.state.log_prefix, app)
        body = json.dumps({"release": release, "pid": pid, "message": message, "service": service})
        event = {"timestamp": int(time.time() * 1000), "message": body}
        try:
            try:
                await cw.put_log_events(logGroupName=group, logStreamName=EVENTS_STREAM, logEvents=[event])
            except Exception as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
                try:
                    await cw.create_log_stream(logGroupName=group, logStreamName=EVENTS_STREAM)
                except Exception as again:
                    if error_code(again) != "ResourceAlreadyExistsException":
                        raise
                await cw.put_log_events(logGroupName=group, logStreamName=EVENTS_STREAM, logEvents=[event])
        except Exception as exc:  # an event is never worth failing its operation for
            log.error("logs.event", app=app, error=type(exc).__name__)

    async def ensure_group(self) -> None:
        """ECS ships every process's lines into its app's group (awslogs): only the rack's group is made sure
        of here (a start step of the workers); its retention is the log store's history age
        (``RACK_LOGS_HISTORY_MAX_AGE``), in whole days."""
        max_age = LogStoreSettings().history_max_age
        cw = await self.cw()
        group = self.apps.state.log_prefix
        try:
            await cw.create_log_group(logGroupName=group)
        except Exception as exc:
            if error_code(exc) != "ResourceAlreadyExistsException":
                with translated(f"cannot create the log group {group}"):
                    raise
        if max_age:
            days = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288]
            wanted_days = next((d for d in days if d * 86400 >= max_age), days[-1])
            with translated(f"cannot set the retention of {group}"):
                await cw.put_retention_policy(logGroupName=group, retentionInDays=wanted_days)

    async def close(self) -> None:
        self._releases.clear()
