"""Timers: each timer of an app's active release runs its command as a one-off process of its service on its
cron schedule (UTC). A run is a normal one-off (``convox ps`` shows it, its output is in ``convox logs``) with a
platform event for its start and its exit code; a run still going when the next is due is not doubled (that
beat is skipped). Timers follow the active release (read at each beat) and go with the app.

Each timer's next run, last run, its exit code and the run in progress are saved in the rack's state (one
transaction per change), so ``convox timers`` after a restart of the rack still shows them: the next runner
follows a run the previous one left going to its exit code, and never starts it twice (a run whose pid was
not saved is found on the Engine by its labels). Runs that fell due while no runner ran are not made up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import NotFound, RackError
from shared.logfmt import Logger
from shared.manifest import Manifest, ManifestError, Timer, resolve_manifest
from shared.manifest.timers import next_run
from shared.models import ProcessRunOptions, TimerStatus
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_TIMER, Docker, translated
from shared.provider.local.events import Events
from shared.provider.local.processes import LocalProcesses
from shared.provider.local.releases import LocalReleases

log = Logger("timers")
BEAT_SECONDS = 1.0


@dataclass
class _State:
    schedule: str
    next_run: datetime
    last_run: datetime | None = None
    last_exit: int | None = None
    running: str = ""
    """The pid of the run in progress, empty when none is."""
    started: float = 0.0
    """The real time (Unix) the last run started: where the Engine's events are read from for its exit."""


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


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
        """Each timer's state, as saved in the rack's state (one transaction per change): kept across restarts."""
        self.loaded = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def adopt(self) -> None:
        """Take the saved state again, then beat once a second until closed (the apps service starts it: one
        runner per rack)."""
        await self.load()
        self._spawn(self._loop())

    async def load(self) -> None:
        """The timers' state as the previous runner left it. A run it left going is followed to its exit code
        (and not doubled meanwhile); a run that fell due while nobody ran the timers is not made up (as cron)."""
        now = self.clock()
        self.state = {}
        for row in await self.apps.state.fetch_all("SELECT * FROM timers"):
            state = _State(
                schedule=row["schedule"],
                next_run=datetime.fromisoformat(row["next_run"]),
                last_run=_time(row["last_run"]),
                last_exit=row["last_exit"],
                running=row["running"],
                started=row["started"],
            )
            key = (row["app"], row["name"])
            self.state[key] = state
            if state.next_run <= now:
                log.log("timer.missed", app=key[0], timer=key[1], due=state.next_run.isoformat())
                state.next_run = next_run(state.schedule, now)
                await self._save(key, state)
            if state.running:
                self._spawn(self._wait(key, state, state.running, state.started - 1))
        self.loaded = True

    async def _save(self, key: tuple[str, str], state: _State) -> None:
        await self.apps.state.execute(
            "INSERT INTO timers (app, name, schedule, next_run, last_run, last_exit, running, started) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app, name) DO UPDATE SET schedule = excluded.schedule, "
            "next_run = excluded.next_run, last_run = excluded.last_run, last_exit = excluded.last_exit, "
            "running = excluded.running, started = excluded.started",
            (
                *key,
                state.schedule,
                state.next_run.isoformat(),
                state.last_run.isoformat() if state.last_run else None,
                state.last_exit,
                state.running,
                state.started,
            ),
        )

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
        if not self.loaded:
            await self.load()
        now = self.clock()
        seen: set[tuple[str, str]] = set()
        for app in await self.apps.list():
            if not app.release:
                continue
            for name, timer in (await self.timers_of(app.name)).items():
                key = (app.name, name)
                seen.add(key)
                state = self.state.get(key)
                if state is None or state.schedule != timer.schedule:  # new, or a new schedule: due from now
                    fresh = _State(schedule=timer.schedule, next_run=next_run(timer.schedule, now))
                    if state is not None:  # how its runs went stays, and a run still going is still going
                        fresh.last_run, fresh.last_exit = state.last_run, state.last_exit
                        fresh.running, fresh.started = state.running, state.started
                    self.state[key] = fresh
                    await self._save(key, fresh)
                    continue
                if now < state.next_run:
                    continue
                state.next_run = next_run(timer.schedule, now)
                await self._save(key, state)  # before the run starts: a restart right after never runs it again
                if not state.running:  # a run its pid was not saved for (the rack stopped as it started) counts
                    state.running = await self._going(app.name, name)
                    if state.running:
                        await self._save(key, state)
                        self._spawn(self._wait(key, state, state.running, time.time() - 1))
                if state.running:
                    log.log("timer.skip", app=app.name, timer=name, reason="still running", pid=state.running)
                    continue
                await self._run(app.name, timer, state, now)
        for key in [key for key in self.state if key not in seen]:  # the timer or its app went
            del self.state[key]
            await self.apps.state.execute("DELETE FROM timers WHERE app = ? AND name = ?", key)

    async def _going(self, app: str, name: str) -> str:
        """The pid of a run of the timer that the Engine runs, empty when none does."""
        labels = {LABEL_RACK: self.processes.rack, LABEL_APP: app, LABEL_TIMER: name, LABEL_ONEOFF: "true"}
        found = await self.docker.containers(labels)
        return str(found[0]["Id"])[:12] if found else ""

    async def _run(self, app: str, timer: Timer, state: _State, now: datetime) -> None:
        key = (app, timer.name)
        options = ProcessRunOptions(
            service=timer.service, command=["sh", "-c", timer.command], timer=timer.name
        )
        since = time.time() - 1
        try:
            process = await self.processes.run(app, options)
        except RackError as exc:
            state.last_run, state.last_exit = now, None
            await self._save(key, state)
            await self.events.emit(app, f"timer {timer.name} could not start: {exc.message}", service="timer")
            return
        state.last_run, state.last_exit, state.running, state.started = now, None, process.id, since + 1
        await self._save(key, state)
        await self.events.emit(app, f"timer {timer.name} started", pid=process.id, service="timer")
        self._spawn(self._wait(key, state, process.id, since))

    async def _wait(self, key: tuple[str, str], state: _State, pid: str, since: float) -> None:
        """The run's exit code from the Engine's ``die`` event (read from ``since``: a run that ended and was
        removed before this began is still found). Cancelled (the runner stops), the run goes on: the next
        runner follows it."""
        try:
            code = await self._exit_code(pid, since)
        except RackError:
            code = None  # the engine went away: the code is not known
        shown = "unknown" if code is None else str(code)
        await self.events.emit(key[0], f"timer {key[1]} exited with code {shown}", pid=pid, service="timer")
        running = "" if state.running == pid else state.running
        if self.state.get(key) is state:  # saved first: whoever sees it ended in memory finds it saved too
            await self.apps.state.execute(
                "UPDATE timers SET running = ?, last_exit = ? WHERE app = ? AND name = ?", (running, code, *key)
            )
        state.running, state.last_exit = running, code

    async def _died(self, pid: str, since: float) -> tuple[bool, int | None]:
        """Whether the Engine's past events since ``since`` hold the run's ``die`` event, and its exit code."""
        filters = json.dumps({"container": [pid], "event": ["die"]})
        params = {"filters": filters, "since": f"{since:.9f}", "until": f"{time.time():.9f}"}
        async with translated("events"), self.docker.client._query("events", params=params) as response:
            body = await response.text()
        for line in body.splitlines():
            if line.strip():
                attributes = (json.loads(line).get("Actor") or {}).get("Attributes") or {}
                exit_code = str(attributes.get("exitCode", ""))
                return True, int(exit_code) if exit_code.isdigit() else None
        return False, None

    async def _exit_code(self, pid: str, since: float) -> int | None:
        """Poll the Engine's past events (a bounded query each time) until the run's ``die`` event is there;
        a run that is no longer running without one (it ended while nobody followed it, and the Engine's
        event history no longer has it) gives its code from its container, or none when that is gone too."""
        pause = 0.1
        while True:
            died, code = await self._died(pid, since)
            if died:
                return code
            try:
                info = await self.docker.inspect(pid)
            except NotFound:
                return (await self._died(pid, since))[1]  # its die event may have come just before it went
            state = info.get("State") or {}
            if not state.get("Running"):
                died, code = await self._died(pid, since)
                exit_code = state.get("ExitCode")
                return code if died else exit_code if isinstance(exit_code, int) else None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def list(self, app: str) -> list[TimerStatus]:
        """The app's timers with their last run, its exit code and the next run."""
        out = []
        now = self.clock()
        rows = await self.apps.state.fetch_all("SELECT * FROM timers WHERE app = ?", (app,))
        saved = {row["name"]: row for row in rows}  # as the runner saved it (it may run in another process)
        for name, timer in sorted((await self.timers_of(app)).items()):
            row = saved.get(name)
            due = row["next_run"] if row is not None and row["schedule"] == timer.schedule else None
            out.append(
                TimerStatus(
                    name=name,
                    schedule=timer.schedule,
                    service=timer.service,
                    command=timer.command,
                    last_run=_time(row["last_run"]) if row else None,
                    last_exit=row["last_exit"] if row else None,
                    running=row["running"] if row else "",
                    next_run=datetime.fromisoformat(due) if due else next_run(timer.schedule, now),
                )
            )
        return out

    async def forget(self, app: str) -> None:
        for key in [key for key in self.state if key[0] == app]:
            del self.state[key]
        await self.apps.state.execute("DELETE FROM timers WHERE app = ?", (app,))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
