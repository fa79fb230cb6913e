"""Timers on the aws provider (the rack's own scheduler calling RunTask, state on the app's DynamoDB item),
driven by a test clock against moto in server mode.

Simulated: AWS itself (moto); the container instance (registered in moto so that RunTask places tasks; no
task ever runs, they are records pinned at RUNNING until stopped); the end of a run (the test stops its
task, as its container exiting would) and its exit code (tests/aws/ecs_agent_double.py, the ECS agent's
report that moto cannot take). Two schedulers on one provider stand for two rack API tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest, NotFound
from shared.manifest import Manifest, Service, Timer
from shared.provider.aws.apps import log_group
from shared.provider.aws.processes import TAG_TIMER
from shared.provider.aws.provider import AwsProvider
from shared.provider.aws.state import now_iso, to_item
from shared.provider.aws.timers import AwsTimers, states_of
from tests.aws.ecs_agent_double import ReportedExits
from tests.clock import FakeClock
from tests.conftest import RACK_NAME
from tests.contract.moto_server import register_container_instance
from tests.moto_server import MotoServer


@pytest.fixture
async def provider(aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AwsProvider]:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK_NAME)) as opened:
        await asyncio.to_thread(register_container_instance, RACK_NAME)
        yield opened


def scheduler(provider: AwsProvider, clock: FakeClock) -> AwsTimers:
    """A scheduler like the provider's own (one per rack API task), on the test clock."""
    p = provider
    return AwsTimers(p.state, p.clients, p.apps, p.releases, p.formation, p.processes, p.logs, clock=clock)


async def deploy(provider: AwsProvider, app: str, timers: dict[str, Timer], build: str) -> str:
    """A build record (as the builder leaves it) with a manifest of one service and ``timers``, released
    and promoted; returns the release."""
    manifest = Manifest(services={"web": Service(name="web", image="busybox", command="sleep 3600")}, timers=timers)
    item: dict[str, Any] = {"id": build, "app": app, "status": "complete", "manifest": manifest.model_dump_json()}
    item.update(created=now_iso(), images={}, release="")
    db = await provider.state.dynamodb()
    await db.put_item(TableName=provider.state.builds_table, Item=to_item(item))
    release = await provider.releases.create(app, build=build)
    await provider.releases.promote(app, release.id)
    return release.id


async def timer_tasks(provider: AwsProvider, app: str, timer: str) -> list[dict[str, Any]]:
    """The app's RUNNING tasks tagged as runs of ``timer``, as ECS (moto) holds them."""
    ecs = await provider.clients.get("ecs")
    arns = (await ecs.list_tasks(cluster=RACK_NAME, desiredStatus="RUNNING"))["taskArns"]
    if not arns:
        return []
    tasks = (await ecs.describe_tasks(cluster=RACK_NAME, tasks=arns, include=["TAGS"]))["tasks"]
    found = []
    for task in tasks:
        tags = {t["key"]: t["value"] for t in task.get("tags", [])}
        if task["lastStatus"] == "RUNNING" and tags.get(TAG_TIMER) == timer and tags.get("convox.app") == app:
            found.append(task)
    return found


async def events(provider: AwsProvider, app: str) -> list[str]:
    cw = await provider.clients.get("logs")
    group = log_group(provider.state.log_prefix, app)
    response = await cw.filter_log_events(logGroupName=group, logStreamNames=["convox/events"])
    messages = [json.loads(e["message"])["message"] for e in response.get("events", [])]
    return [m for m in messages if m.startswith("timer ")]


async def test_timers_fire_once_per_due_time_are_not_doubled_follow_releases_and_go_with_the_app(
    provider: AwsProvider,
) -> None:
    app = "timed"
    await provider.apps.create(app)
    first = await deploy(
        provider,
        app,
        {
            "tick": Timer(name="tick", schedule="* * * * *", command="echo tick; exit 3", service="web"),
            "slow": Timer(name="slow", schedule="* * * * *", command="sleep 600", service="web"),
        },
        "BTIMERSONE",
    )
    clock = FakeClock()
    one, two = scheduler(provider, clock), scheduler(provider, clock)
    exits = ReportedExits()
    await exits.install(provider)

    await one.beat()  # 00:00:30: first seen, nothing is due yet; the state is on the app's item
    states = states_of(await provider.apps.item(app))
    assert sorted(states) == ["slow", "tick"]
    assert states["tick"].next == datetime(2030, 1, 1, 0, 1, tzinfo=UTC) and states["tick"].task == ""
    listed = {t.name: t for t in await one.list(app)}
    assert listed["tick"].next_run == datetime(2030, 1, 1, 0, 1, tzinfo=UTC) and listed["tick"].last_run is None
    assert (listed["tick"].service, listed["tick"].command) == ("web", "echo tick; exit 3")
    assert await timer_tasks(provider, app, "tick") == []

    clock.at(1)
    await asyncio.gather(one.beat(), two.beat())  # two rack API tasks beat at the same due time: one run each
    ticks, slows = await timer_tasks(provider, app, "tick"), await timer_tasks(provider, app, "slow")
    assert len(ticks) == 1 and len(slows) == 1
    tags = {t["key"]: t["value"] for t in ticks[0]["tags"]}
    assert tags.items() >= {"convox.rack": RACK_NAME, "convox.app": app, "convox.release": first}.items()
    processes = {p.id: p for p in await provider.processes.list(app)}  # convox ps shows the runs
    tick_pid = ticks[0]["taskArn"].rsplit("/", 1)[-1].replace("-", "")[-12:]
    assert processes[tick_pid].name == "web" and processes[tick_pid].release == first
    assert processes[tick_pid].command == "sh -c echo tick; exit 3"
    listed = {t.name: t for t in await two.list(app)}
    assert (listed["tick"].running, listed["tick"].last_run, listed["tick"].last_exit) == (tick_pid, clock.now, None)
    assert listed["tick"].next_run == datetime(2030, 1, 1, 0, 2, tzinfo=UTC)

    # the tick run ends with code 3 (as its container's exit, reported by the agent double); slow still runs
    exits.exited(ticks[0]["taskArn"], 3)
    await provider.processes.stop(app, tick_pid)
    clock.at(2)
    await asyncio.gather(two.beat(), one.beat())
    assert len(await timer_tasks(provider, app, "slow")) == 1  # not doubled
    new_ticks = await timer_tasks(provider, app, "tick")
    assert len(new_ticks) == 1 and new_ticks[0]["taskArn"] != ticks[0]["taskArn"]
    listed = {t.name: t for t in await one.list(app)}
    assert listed["slow"].running and listed["slow"].last_run == clock.now - timedelta(minutes=1)
    assert listed["slow"].next_run == datetime(2030, 1, 1, 0, 3, tzinfo=UTC)
    assert listed["tick"].last_run == clock.now and listed["tick"].running != tick_pid
    messages = await events(provider, app)
    assert messages.count("timer tick started") == 2 and messages.count("timer slow started") == 1
    assert messages.count("timer tick exited with code 3") == 1

    # the second tick run ends; the listing shows its code (moto's own 0: no code was reported for it)
    await provider.processes.stop(app, listed["tick"].running)
    await one.beat()  # 00:02 again: nothing more is due
    listed = {t.name: t for t in await one.list(app)}
    assert (listed["tick"].running, listed["tick"].last_exit) == ("", 0)
    assert len(await timer_tasks(provider, app, "tick")) == 0

    # a new release without slow: its state goes at the next beat (its run already started is left alone)
    await deploy(
        provider, app, {"tick": Timer(name="tick", schedule="*/5 * * * *", command="true", service="web")}, "BTIMERSTWO"
    )
    clock.at(3)
    await one.beat()
    states = states_of(await provider.apps.item(app))
    assert sorted(states) == ["tick"] and states["tick"].next == datetime(2030, 1, 1, 0, 5, tzinfo=UTC)
    assert [(t.name, t.schedule) for t in await one.list(app)] == [("tick", "*/5 * * * *")]
    clock.at(4)
    await one.beat()
    assert len(await timer_tasks(provider, app, "tick")) == 0  # not due on its new schedule

    # the app goes: its timer runs are stopped, its timers are no more, and nothing fires for it
    await provider.apps.delete(app)
    assert await timer_tasks(provider, app, "slow") == []
    with pytest.raises(NotFound):
        await one.list(app)
    clock.at(5)
    await one.beat()
    assert await timer_tasks(provider, app, "tick") == []


async def test_a_release_with_a_timer_that_cannot_run_is_refused_at_promote(provider: AwsProvider) -> None:
    app = "badtimers"
    await provider.apps.create(app)
    good = await deploy(provider, app, {}, "BTIMERSGOOD")
    bad = {
        "61 * * * *": Timer(name="late", schedule="61 * * * *", command="true", service="web"),
        "* * *": Timer(name="short", schedule="* * *", command="true", service="web"),
        "service": Timer(name="lost", schedule="* * * * *", command="true", service="nope"),
    }
    for tag, (problem, timer) in zip(("BTIMERSBADA", "BTIMERSBADB", "BTIMERSBADC"), bad.items(), strict=True):
        with pytest.raises(BadRequest) as refused:
            await deploy(provider, app, {timer.name: timer}, tag)
        assert f"timer {timer.name}:" in refused.value.message and problem in refused.value.message
        assert (await provider.apps.get(app)).release == good  # nothing changed


async def test_a_due_time_that_fell_while_no_scheduler_beat_is_not_made_up(provider: AwsProvider) -> None:
    app = "downtimed"
    await provider.apps.create(app)
    await deploy(
        provider, app, {"tick": Timer(name="tick", schedule="* * * * *", command="true", service="web")}, "BDOWNTIMED"
    )
    clock = FakeClock()
    await scheduler(provider, clock).beat()  # 00:00:30: first seen, due at 00:01
    clock.at(3)  # every rack API task was down over 00:01 and 00:02 (as the local timers, as cron: not made up)
    clock.now += timedelta(seconds=20)
    restarted = scheduler(provider, clock)
    await restarted.beat()
    assert await timer_tasks(provider, app, "tick") == []
    assert states_of(await provider.apps.item(app))["tick"].next == datetime(2030, 1, 1, 0, 4, tzinfo=UTC)
    clock.at(5)  # beating since: a due time is run however late its beat (here 00:04, a minute and more late)
    clock.now += timedelta(seconds=10)
    await restarted.beat()
    assert len(await timer_tasks(provider, app, "tick")) == 1
