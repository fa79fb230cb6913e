"""Timers on AWS: the rack's own scheduler, firing ECS RunTask when a timer is due, its state in DynamoDB.

Semantics are the local provider's (shared/provider/local/timers.py): each timer of an app's active release
runs its command (``sh -c``) as a one-off process of its service's current release on its 5-field cron
schedule (UTC); a run is a normal one-off (RunTask through :meth:`AwsProcesses.run`, tagged ``convox.rack``,
``convox.app``, ``convox.type``, ``convox.release`` and ``convox.timer``, so ``convox ps`` shows it and the
reaper and app deletion stop it like any other); a run still going when the next is due is not doubled (that
due time is skipped); timers follow the active release (read at each beat) and go with the app. Platform
events say when a run started and with which exit code it ended.

**Design choice: (b), the rack's own scheduler, not EventBridge rules.** :meth:`AwsTimers.adopt` starts a
loop that beats every few seconds (a start step of the workers, run by the logs service, as locally). Why not
EventBridge rules with ECS RunTask targets, as Convox gen1 had cron (Events::Rule + Lambda)?

- *Not doubled* cannot hold with a rule alone: EventBridge fires RunTask whatever still runs, so it would
  need a wrapper in every image or a reaper stopping the second run after it started (the command has then
  already begun, which is doubling). The scheduler asks ECS first and skips: that holds.
- *Exactly one run per due time across rack API tasks* is a conditional write here (below); a rule would
  give it only if EventBridge delivers once, which it does not promise (at least once, with retries).
- It can be proven on moto: moto stores rules and targets but never fires them, so with (a) no test could
  show that a due time makes one run. Here the test moves a clock and sees the RunTask, its tags and ps.
- Every 5-field cron expression is accepted as locally: no translation to AWS's 6-field ``cron()`` with its
  ``?`` rule, and nothing the manifest allows has to be refused for AWS's sake.
- The cost: the rack must be up for timers to fire (a due time while no rack API task runs is skipped, as
  locally and as cron: a scheduler's first beat moves a due time more than :data:`MISSED_AFTER` past on to
  the next one, never a burst and no late run); and each beat is one Scan of the apps table
  (1 MB pages) plus one DescribeTasks per 100 runs in progress, whatever the number of timers.

**State**: a map attribute ``timer:<name>`` on the app's item in ``<prefix>-apps``: ``schedule``, ``next``
(the due time, ISO 8601 UTC), ``last_run``, ``exit`` (absent while unknown), ``task`` (the ARN of the run in
progress, ``""`` when none). It goes with the app's item; a timer no longer in the active release loses its
attribute at the next beat (a run of it already started is left to finish). Two rack API tasks beat the same
items: a due time is claimed by a conditional update (``next`` still the due time read, the app not being
deleted) before RunTask, so exactly one of them runs it; recording a run's end is conditional on ``task``
still naming it, so its exit event is written once. A claim whose RunTask fails leaves ``task`` empty and
says so in an event; the next due time tries again.

**Exit codes** are read from ``containers[].exitCode`` of the stopped task (the container named for the
service) when the beat sees it STOPPED; a task ECS no longer knows (stopped tasks are kept about an hour) or
one whose container never started has no code (``None``). On moto every container reports 0; the tests set
what the ECS agent would report through a test double.

**Checks at promote**: a release whose timers cannot run (a schedule that is not 5-field cron, a service not
in the manifest) is refused before any change (:meth:`AwsTimers.check`, registered with formation).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import BadRequest, Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.manifest import Manifest, ManifestError, Timer, resolve_manifest
from shared.manifest.timers import every_seconds, next_run, schedule_problem
from shared.models import ProcessRunOptions, Release, TimerStatus
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.formation import AwsFormation
from shared.provider.aws.logs import AwsLogs
from shared.provider.aws.processes import TAG_TIMER, AwsProcesses, pid_of, tags_of
from shared.provider.aws.releases import AwsReleases
from shared.provider.aws.state import Item, State, to_item
from shared.provider.workers import Loop

log = Logger("timers")
PREFIX = "timer:"
"""The app item's attribute holding one timer's state is ``timer:<name>`` (no app or timer name has ``:``)."""
BEAT_SECONDS = 5.0
"""Seconds between beats: due times are whole minutes, so a run starts at most this late."""
DESCRIBE_BATCH = 100
MISSED_AFTER = timedelta(minutes=1)
"""A due time this far past at a scheduler's first beat fell due while no scheduler beat (every rack API task
down: a live one beats every few seconds and claims it): it is not made up (as cron, and as the local
provider's timers at their start), the timer is due again at its next time from now. A scheduler that has been
beating runs a due time however late its beat (a slow scan, AWS throttling)."""


@dataclass
class TimerState:
    schedule: str
    next: datetime
    last_run: datetime | None = None
    exit: int | None = None
    task: str = ""
    """The ARN of the run in progress; empty when none is."""

    @classmethod
    def of(cls, value: Any) -> TimerState | None:
        if not isinstance(value, dict) or "schedule" not in value or "next" not in value:
            return None
        last_run = value.get("last_run")
        code = value.get("exit")
        return cls(
            schedule=str(value["schedule"]),
            next=datetime.fromisoformat(str(value["next"])),
            last_run=datetime.fromisoformat(last_run) if isinstance(last_run, str) and last_run else None,
            exit=int(code) if isinstance(code, int | float) else None,
            task=str(value.get("task", "")),
        )


def states_of(item: Item) -> dict[str, TimerState]:
    """The timers' states kept on an app's item, by timer name."""
    found = {}
    for key, value in item.items():
        if key.startswith(PREFIX):
            state = TimerState.of(value)
            if state is not None:
                found[key[len(PREFIX) :]] = state
    return found


def timer_problem(timer: Timer, manifest: Manifest) -> str | None:
    """Why ``timer`` cannot run, or None."""
    if every_seconds(timer.schedule) is None:
        problem = schedule_problem(timer.schedule)
        if problem:
            return f"timer {timer.name}: schedule {timer.schedule!r} {problem}"
    if timer.service not in manifest.services:
        known = ", ".join(sorted(manifest.services)) or "none"
        return f"timer {timer.name}: no service named {timer.service} (services: {known})"
    return None


def exit_code(task: dict[str, Any] | None, service: str) -> int | None:
    """The exit code of the service's container of a stopped task; None when ECS does not say."""
    if task is None:
        return None
    containers = task.get("containers") or []
    for container in containers:
        if container.get("name") == service and isinstance(container.get("exitCode"), int):
            return int(container["exitCode"])
    return None


class AwsTimers:
    def __init__(
        self,
        state: State,
        clients: Clients,
        apps: AwsApps,
        releases: AwsReleases,
        formation: AwsFormation,
        processes: AwsProcesses,
        logs: AwsLogs,
        clock: Callable[[], datetime] | None = None,
        interval: float = BEAT_SECONDS,
    ) -> None:
        self.state = state
        self.clients = clients
        self.apps = apps
        self.releases = releases
        self.processes = processes
        self.logs = logs
        self.cluster = formation.cluster
        self.clock = clock or (lambda: datetime.now(UTC))
        self.interval = interval
        self._timers: dict[tuple[str, str], dict[str, Timer]] = {}
        """The timers of a release (releases never change), by (app, release)."""
        self._firing: dict[str, asyncio.Lock] = {}
        self.beaten = False
        """Whether this scheduler has beaten since it started: only its first beat finds missed due times."""
        self._loop_task: asyncio.Task[None] | None = None
        formation.checks.append(self.check)
        apps.on_delete.append(self.forget)

    # ---- the release's timers ------------------------------------------------------------------------

    async def timers_of(self, app: str, release_id: str) -> dict[str, Timer]:
        """The runnable timers of a release (remembered); one that cannot run is logged and left out."""
        key = (app, release_id)
        cached = self._timers.get(key)
        if cached is not None:
            return cached
        release = await self.releases.get(app, release_id)
        timers: dict[str, Timer] = {}
        if release.manifest:
            try:
                manifest = resolve_manifest(Manifest.model_validate_json(release.manifest), release.env)
            except ManifestError as exc:
                log.error("timers.manifest", app=app, release=release_id, error=str(exc))
                manifest = Manifest()
            for name, timer in manifest.timers.items():
                problem = timer_problem(timer, manifest)
                if problem:
                    log.error("timers.invalid", app=app, release=release_id, timer=name, error=problem)
                else:
                    timers[name] = timer
        self._timers[key] = timers
        return timers

    async def check(self, release: Release) -> None:
        """Refuse (400) a release with a timer that cannot run; called at promote before any change."""
        if not release.manifest:
            return
        try:
            manifest = resolve_manifest(Manifest.model_validate_json(release.manifest), release.env)
        except ManifestError:
            return  # formation reports the manifest's own problem
        problems = [p for t in manifest.timers.values() if (p := timer_problem(t, manifest))]
        if problems:
            raise BadRequest("; ".join(problems))

    # ---- the scheduler -------------------------------------------------------------------------------

    async def adopt(self) -> None:
        """Nothing to take again: the timers' state is on the apps' items."""
        return None

    def loops(self) -> list[Loop]:
        """Beat every ``interval`` seconds, under :meth:`AwsProvider.workers` (should two rack API tasks
        run one each, claims are conditional: a due time runs once)."""
        return [Loop("timers", self._loop)]

    async def _loop(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # the scheduler survives any error, and says so
                log.error("timers.beat", error=str(exc))
            await asyncio.sleep(self.interval)

    async def beat(self) -> None:
        """Record the end of runs that stopped, drop the state of timers that went, and start every timer
        that is due now (the clock's time), unless its last run is still going."""
        now = self.clock()
        work: list[tuple[Item, dict[str, Timer]]] = []
        async for item in self.state.scan(self.state.apps_table):
            if item.get("status") == "deleting":
                continue
            timers: dict[str, Timer] = {}
            if item.get("release"):
                try:
                    timers = await self.timers_of(item["name"], item["release"])
                except RackError as exc:  # the app went meanwhile, or AWS failed: the others still beat
                    log.error("timers.release", app=item["name"], error=exc.message)
                    continue
            if timers or states_of(item):
                work.append((item, timers))
        tasks = await self._describe([s.task for item, _ in work for s in states_of(item).values() if s.task])
        first, self.beaten = not self.beaten, True
        for item, timers in work:
            try:
                await self._beat_app(item, timers, tasks, now, first)
            except RackError as exc:
                log.error("timers.beat", app=item["name"], error=exc.message)

    async def _beat_app(
        self, item: Item, timers: dict[str, Timer], tasks: dict[str, dict[str, Any]], now: datetime, first: bool = False
    ) -> None:
        app = item["name"]
        states = states_of(item)
        for name in sorted(set(states) - set(timers)):
            await self._update(app, "REMOVE #a", {}, "", name)
            log.log("timer.remove", app=app, timer=name)
        for name, timer in sorted(timers.items()):
            state = states.get(name)
            if state is not None and state.task:
                task = tasks.get(state.task)
                if task is None or task.get("lastStatus") == "STOPPED":
                    await self._ended(app, timer, state, task)
            if state is None:
                fresh = {"schedule": timer.schedule, "next": next_run(timer.schedule, now).isoformat(), "task": ""}
                with contextlib.suppress(Conflict):
                    await self._update(app, "SET #a = :state", {":state": fresh}, "attribute_not_exists(#a)", name)
                continue
            if state.schedule != timer.schedule:  # a new release changed it: due from now on its new schedule
                with contextlib.suppress(Conflict):
                    await self._update(
                        app,
                        "SET #a.#sch = :sch, #a.#next = :next",
                        {
                            ":sch": timer.schedule,
                            ":next": next_run(timer.schedule, now).isoformat(),
                            ":old": state.schedule,
                        },
                        "#a.#sch = :old",
                        name,
                    )
                continue
            if now < state.next:
                continue
            if first and now - state.next > MISSED_AFTER:
                await self._missed(app, timer, state, now)
                continue
            await self._due(app, item["release"], timer, state, now)

    async def _missed(self, app: str, timer: Timer, state: TimerState, now: datetime) -> None:
        """A due time nobody ran at (:data:`MISSED_AFTER`): on to the next one (whoever sees it first)."""
        with contextlib.suppress(Conflict):
            await self._update(
                app,
                "SET #a.#next = :next",
                {":next": next_run(timer.schedule, now).isoformat(), ":due": state.next.isoformat()},
                "#a.#next = :due",
                timer.name,
            )
            log.log("timer.missed", app=app, timer=timer.name, due=state.next.isoformat())

    async def _due(self, app: str, release: str, timer: Timer, state: TimerState, now: datetime) -> None:
        """Claim this due time (one claimer wins), then run it unless the last run still goes."""
        following = next_run(timer.schedule, now).isoformat()
        due = state.next.isoformat()
        if state.task:
            with contextlib.suppress(Conflict):
                await self._update(
                    app,
                    "SET #a.#next = :next",
                    {":next": following, ":due": due, ":arn": state.task},
                    "#a.#next = :due AND #a.#task = :arn",
                    timer.name,
                )
                log.log("timer.skip", app=app, timer=timer.name, reason="still running", pid=pid_of(state.task))
            return
        async with self._firing.setdefault(app, asyncio.Lock()):
            try:
                await self._update(
                    app,
                    "SET #a.#next = :next, #a.#last = :now, #a.#task = :none REMOVE #a.#exit",
                    {":next": following, ":due": due, ":now": now.isoformat(), ":none": "", ":deleting": "deleting"},
                    "#a.#next = :due AND #a.#task = :none AND #s <> :deleting",
                    timer.name,
                )
            except Conflict:
                return  # another rack task claimed it, or the app is going
            options = ProcessRunOptions(
                service=timer.service,
                command=["sh", "-c", timer.command],
                release=release,
                timer=timer.name,
            )
            try:
                process = await self.processes.run(app, options)
            except RackError as exc:
                log.error("timer.run", app=app, timer=timer.name, error=exc.message)
                await self.logs.event(app, f"timer {timer.name} could not start: {exc.message}", service="timer")
                return
            try:
                arn = await self._arn_of(process.id, app, timer.name)
            except NotFound:  # it stopped at once: the next due time runs again, its exit code is not known
                arn = ""
            with contextlib.suppress(Conflict, NotFound):
                await self._update(
                    app, "SET #a.#task = :arn", {":arn": arn, ":now": now.isoformat()}, "#a.#last = :now", timer.name
                )
        log.log("timer.run", app=app, timer=timer.name, release=release, pid=process.id)
        await self.logs.event(app, f"timer {timer.name} started", release=release, pid=process.id, service="timer")

    async def _ended(self, app: str, timer: Timer, state: TimerState, task: dict[str, Any] | None) -> None:
        """Record that the run stopped, with its exit code (once, whoever sees it first)."""
        code = exit_code(task, timer.service)
        expression = "SET #a.#task = :none" + (", #a.#exit = :code" if code is not None else " REMOVE #a.#exit")
        values: dict[str, Any] = {":none": "", ":arn": state.task}
        if code is not None:
            values[":code"] = code
        pid = pid_of(state.task)
        try:
            await self._update(app, expression, values, "#a.#task = :arn", timer.name)
        except Conflict:
            state.task = ""  # another rack task recorded it first
            return
        state.task, state.exit = "", code
        shown = "unknown" if code is None else str(code)
        log.log("timer.exit", app=app, timer=timer.name, pid=pid, code=shown)
        await self.logs.event(app, f"timer {timer.name} exited with code {shown}", pid=pid, service="timer")

    # ---- AWS -----------------------------------------------------------------------------------------

    async def _arn_of(self, pid: str, app: str, timer: str) -> str:
        """The task ARN of a run just started (the run's tags name its timer)."""
        for task in await self._timer_tasks(app):
            if pid_of(task["taskArn"]) == pid and tags_of(task).get(TAG_TIMER) == timer:
                return str(task["taskArn"])
        raise NotFound(f"no such process: {pid}")

    async def _timer_tasks(self, app: str) -> list[dict[str, Any]]:
        ecs = await self.clients.get("ecs")
        arns: list[str] = []
        with translated("cannot list the rack's tasks"):
            paginator = ecs.get_paginator("list_tasks")
            async for page in paginator.paginate(
                cluster=self.cluster, startedBy=f"convox.{app}", desiredStatus="RUNNING"
            ):
                arns.extend(page.get("taskArns", []))
        described = await self._describe(arns)
        return [t for t in described.values() if TAG_TIMER in tags_of(t) and tags_of(t).get("convox.app") == app]

    async def _describe(self, arns: list[str]) -> dict[str, dict[str, Any]]:
        """Tasks by ARN, with their tags, in batches of 100; a task ECS no longer knows is absent."""
        if not arns:
            return {}
        ecs = await self.clients.get("ecs")
        found: dict[str, dict[str, Any]] = {}
        unique = sorted(set(arns))
        with translated("cannot describe the timers' runs"):
            for start in range(0, len(unique), DESCRIBE_BATCH):
                described = await ecs.describe_tasks(
                    cluster=self.cluster, tasks=unique[start : start + DESCRIBE_BATCH], include=["TAGS"]
                )
                for task in described.get("tasks", []):
                    found[str(task["taskArn"])] = task
        return found

    async def _update(self, app: str, expression: str, values: dict[str, Any], condition: str, timer: str) -> None:
        """A conditional update of one timer's state on the app's item (the app must still exist)."""
        names = {"#n": "name", "#a": PREFIX + timer}
        placeholders = {
            "#s": "status",
            "#sch": "schedule",
            "#next": "next",
            "#last": "last_run",
            "#exit": "exit",
            "#task": "task",
        }
        used = set(re.findall(r"#\w+", f"{expression} {condition}"))
        names.update({k: v for k, v in placeholders.items() if k in used})
        db = await self.state.dynamodb()
        kwargs: dict[str, Any] = {
            "TableName": self.state.apps_table,
            "Key": to_item({"name": app}),
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_exists(#n)" + (f" AND ({condition})" if condition else ""),
            "ExpressionAttributeNames": names,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = to_item(values)
        try:
            await db.update_item(**kwargs)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise Conflict(f"timer {timer} of {app} changed meanwhile") from None
            with translated(f"cannot update the timer {timer} of {app}"):
                raise

    # ---- reading and forgetting ----------------------------------------------------------------------

    async def list(self, app: str) -> list[TimerStatus]:
        """The timers of the app's active release with their last run, its exit code and the next run."""
        item = await self.apps.item(app)
        if not item.get("release"):
            return []
        states = states_of(item)
        now = self.clock()
        out = []
        for name, timer in sorted((await self.timers_of(app, item["release"])).items()):
            state = states.get(name)
            current = state is not None and state.schedule == timer.schedule
            out.append(
                TimerStatus(
                    name=name,
                    schedule=timer.schedule,
                    service=timer.service,
                    command=timer.command,
                    last_run=state.last_run if state else None,
                    last_exit=state.exit if state and not state.task else None,
                    running=pid_of(state.task) if state and state.task else "",
                    next_run=state.next if state and current else next_run(timer.schedule, now),
                )
            )
        return out

    async def forget(self, app: str) -> None:
        """A deleted app (its status is ``deleting``, so no new claim succeeds): wait for a run being started
        here, then stop every timer run of the app still going (one started after the processes went)."""
        async with self._firing.setdefault(app, asyncio.Lock()):
            ecs = await self.clients.get("ecs")
            for task in await self._timer_tasks(app):
                with contextlib.suppress(NotFound), translated("no such process"):
                    await ecs.stop_task(cluster=self.cluster, task=task["taskArn"], reason="app deleted")
        self._firing.pop(app, None)
        for key in [key for key in self._timers if key[0] == app]:
            del self._timers[key]

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
