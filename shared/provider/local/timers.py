"""Timers: each timer of an app's active release runs its command as a one-off process of its service on its
cron schedule (UTC). A run is a normal one-off (``convox ps`` shows it, its output is in ``convox logs``) with a
platform event for its start and its exit code; a run still going when the next is due is not doubled (that
beat is skipped). Timers follow the active release (read at each beat) and go with the app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import RackError
from shared.logfmt import Logger
from shared.manifest import Manifest, ManifestError, Timer, resolve_manifest
from shared.manifest.timers import next_run
from shared.models import ProcessRunOptions, TimerStatus
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import Docker, translated
from shared.provider.local.events import Events
from shared.provider.local.processes import LocalProcesses
from shared.provider.local.releases import LocalReleases

log = Logger("timers")
LABEL_TIMER = "convox.timer"
BEAT_SECONDS = 1.0


@dataclass
class _State:
    schedule: str
    next_run: datetime
    last_run: datetime | None = None
    last_exit: int | None = None
    running: str = ""
    """The pid of the run in progress, empty when none is."""


class LocalTimers:
    def __init__(
        self,
        docker: Docker,
        apps: LocalApps,
        releases: LocalReleases,
        processes: LocalProcesses,
        events: Events,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.docker = docker
        self.apps = apps
        self.releases = releases
        self.processes = processes
        self.events = events
        self.clock = clock or (lambda: datetime.now(UTC))
        self.state: dict[tuple[str, str], _State] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def adopt(self) -> None:
        """Beat once a second until closed (the apps service starts it: one runner per rack)."""
        self._spawn(self._loop())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.beat()
            await asyncio.sleep(BEAT_SECONDS)

    async def timers_of(self, app: str) -> dict[str, Timer]:
        current = await self.apps.get(app)
        if not current.release:
            return {}
        release = await self.releases.get(app, current.release)
        if not release.manifest:
            return {}
        try:
            manifest = resolve_manifest(Manifest.model_validate_json(release.manifest), release.env)
        except ManifestError:
            return {}
        return manifest.timers

    async def beat(self) -> None:
        """Start every timer that is due now (the clock's time), unless its last run is still going."""
        now = self.clock()
        seen: set[tuple[str, str]] = set()
        for app in await self.apps.list():
            if not app.release:
                continue
            for name, timer in (await self.timers_of(app.name)).items():
                key = (app.name, name)
                seen.add(key)
                state = self.state.get(key)
                if state is None or state.schedule != timer.schedule:
                    self.state[key] = _State(schedule=timer.schedule, next_run=next_run(timer.schedule, now))
                    continue
                if now < state.next_run:
                    continue
                state.next_run = next_run(timer.schedule, now)
                if state.running:
                    log.log("timer.skip", app=app.name, timer=name, reason="still running", pid=state.running)
                    continue
                await self._run(app.name, timer, state, now)
        for key in [key for key in self.state if key not in seen]:  # the timer or its app went
            del self.state[key]

    async def _run(self, app: str, timer: Timer, state: _State, now: datetime) -> None:
        options = ProcessRunOptions(
            service=timer.service, command=["sh", "-c", timer.command], labels={LABEL_TIMER: timer.name}
        )
        since = time.time() - 1
        try:
            process = await self.processes.run(app, options)
        except RackError as exc:
            state.last_run, state.last_exit = now, None
            await self.events.emit(app, f"timer {timer.name} could not start: {exc.message}", service="timer")
            return
        state.last_run, state.last_exit, state.running = now, None, process.id
        await self.events.emit(app, f"timer {timer.name} started", pid=process.id, service="timer")
        self._spawn(self._wait(app, timer, state, process.id, since))

    async def _wait(self, app: str, timer: Timer, state: _State, pid: str, since: float) -> None:
        """The run's exit code from the Engine's ``die`` event (read from ``since``: a run that ended and was
        removed before this began is still found)."""
        code: int | None = None
        try:
            code = await self._exit_code(pid, since)
        except RackError:
            code = None  # the engine went away: the code is not known
        finally:
            if state.running == pid:
                state.running = ""
            state.last_exit = code
        shown = "unknown" if code is None else str(code)
        await self.events.emit(app, f"timer {timer.name} exited with code {shown}", pid=pid, service="timer")

    async def _exit_code(self, pid: str, since: float) -> int | None:
        """Poll the Engine's past events (a bounded query each time) until the run's ``die`` event is there."""
        filters = json.dumps({"container": [pid], "event": ["die"]})
        pause = 0.1
        while True:
            params = {"filters": filters, "since": f"{since:.9f}", "until": f"{time.time():.9f}"}
            async with translated("events"), self.docker.client._query("events", params=params) as response:
                body = await response.text()
            for line in body.splitlines():
                if line.strip():
                    attributes = (json.loads(line).get("Actor") or {}).get("Attributes") or {}
                    exit_code = str(attributes.get("exitCode", ""))
                    return int(exit_code) if exit_code.isdigit() else None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def list(self, app: str) -> list[TimerStatus]:
        """The app's timers with their last run, its exit code and the next run."""
        out = []
        now = self.clock()
        for name, timer in sorted((await self.timers_of(app)).items()):
            state = self.state.get((app, name))
            out.append(
                TimerStatus(
                    name=name,
                    schedule=timer.schedule,
                    service=timer.service,
                    command=timer.command,
                    last_run=state.last_run if state else None,
                    last_exit=state.last_exit if state else None,
                    running=state.running if state else "",
                    next_run=state.next_run if state else next_run(timer.schedule, now),
                )
            )
        return out

    async def forget(self, app: str) -> None:
        for key in [key for key in self.state if key[0] == app]:
            del self.state[key]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
