"""Timers on the local provider against the real Docker Engine, driven by a test clock: a timer runs its
command as a one-off of its service's release when due (twice over two minutes), with platform events for
each start and exit code; a run still going when the next is due is not doubled; the listing shows the last
run, its exit code and the next run; timers follow the release."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from shared.manifest import Manifest, Service, Timer
from shared.provider.local import LocalProvider
from shared.provider.local.docker import LABEL_TIMER
from shared.provider.local.events import Events
from shared.provider.local.images import image_name
from shared.provider.local.timers import LocalTimers
from tests.clock import START, FakeClock
from tests.conftest import RACK_NAME
from tests.test_processes_provider import docker, provider

__all__ = ["provider"]  # the fixture, shared with the processes tests


async def release(provider: LocalProvider, app: str, image: str, timers: dict[str, Timer], build: str) -> str:
    manifest = Manifest(services={"web": Service(name="web", command="sleep 3600")}, timers=timers)
    await provider.state.execute(
        "INSERT INTO builds (id, app, status, manifest, created, runner) VALUES (?, ?, 'complete', ?, ?, ?)",
        (build, app, manifest.model_dump_json(), datetime.now(UTC).isoformat(), provider.runner.hold()),
    )
    docker("tag", image, image_name(RACK_NAME, app, "web", build))
    made = await provider.releases.create(app, build=build)
    await provider.apps.set_status(app, "running", release=made.id)
    return made.id


async def settled(timers: LocalTimers, app: str, name: str) -> None:
    for _ in range(300):
        if not timers.state[(app, name)].running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timer {name} is still running")


async def events(provider: LocalProvider, app: str) -> list[str]:
    rows = await provider.state.fetch_all("SELECT message FROM events WHERE app = ? ORDER BY time", (app,))
    return [row["message"] for row in rows if row["message"].startswith("timer ")]


async def test_a_timer_runs_on_schedule_with_events_and_is_never_doubled(
    provider: LocalProvider, busybox_image: str
) -> None:
    app = "timed"
    await provider.apps.create(app)
    build = "B" + "TIMERSTEST"
    timers_spec = {
        "tick": Timer(name="tick", schedule="* * * * *", command="echo tick; exit 3", service="web"),
        "slow": Timer(name="slow", schedule="* * * * *", command="sleep 30", service="web"),
    }
    await release(provider, app, busybox_image, timers_spec, build)
    clock = FakeClock()
    timers = LocalTimers(
        provider.docker, provider.apps, provider.releases, provider.processes, Events(provider.state), clock
    )
    try:
        await timers.beat()  # 00:00:30: first seen, nothing is due yet
        listed = {timer.name: timer for timer in await timers.list(app)}
        assert listed["tick"].next_run == datetime(2030, 1, 1, 0, 1, tzinfo=UTC) and listed["tick"].last_run is None
        assert await events(provider, app) == []

        clock.at(1)
        await timers.beat()
        slow_pid = timers.state[(app, "slow")].running
        assert slow_pid
        running = await provider.processes.list(app)
        assert any(process.id == slow_pid for process in running)  # convox ps shows the timer's run
        await settled(timers, app, "tick")
        listed = {timer.name: timer for timer in await timers.list(app)}
        assert (listed["tick"].last_run, listed["tick"].last_exit) == (clock.now, 3)
        assert listed["tick"].next_run == datetime(2030, 1, 1, 0, 2, tzinfo=UTC)
        assert listed["slow"].running == slow_pid and listed["slow"].last_exit is None

        clock.at(2)
        await timers.beat()  # tick runs again; slow is still going and is not doubled
        await settled(timers, app, "tick")
        assert timers.state[(app, "slow")].running == slow_pid
        labelled = docker("ps", "-q", "--filter", f"label={LABEL_TIMER}=slow", "--filter", f"label=convox.app={app}")
        assert len(labelled.split()) == 1
        messages = await events(provider, app)
        assert messages.count("timer tick started") == 2 and messages.count("timer tick exited with code 3") == 2
        assert messages.count("timer slow started") == 1

        await provider.processes.stop(app, slow_pid)
        await settled(timers, app, "slow")
        assert "timer slow exited with code" in " ".join(await events(provider, app))

        # a new release without timers: they go
        await release(provider, app, busybox_image, {}, "B" + "TIMERSNONE")
        clock.at(3)
        await timers.beat()
        assert await timers.list(app) == [] and timers.state == {}
    finally:
        await timers.close()
        for tag in ("B" + "TIMERSTEST", "B" + "TIMERSNONE"):
            docker("rmi", image_name(RACK_NAME, app, "web", tag), check=False)


def runner(provider: LocalProvider, clock: FakeClock) -> LocalTimers:
    """A timer runner as the logs service (the workers' owner) makes one at each start of the rack."""
    return LocalTimers(
        provider.docker, provider.apps, provider.releases, provider.processes, Events(provider.state), clock
    )


def runs_of(app: str, timer: str) -> list[str]:
    return docker("ps", "-q", "--filter", f"label={LABEL_TIMER}={timer}", "--filter", f"label=convox.app={app}").split()


async def test_timers_keep_their_last_run_across_a_restart_and_a_run_going_is_not_doubled(
    provider: LocalProvider, busybox_image: str
) -> None:
    app = "timed-kept"
    await provider.apps.create(app)
    build = "B" + "TIMERSKEPT"
    timers_spec = {
        "tick": Timer(name="tick", schedule="* * * * *", command="echo tick; exit 3", service="web"),
        "slow": Timer(name="slow", schedule="* * * * *", command="sleep 30", service="web"),
        "lost": Timer(name="lost", schedule="* * * * *", command="sleep 30", service="web"),
    }
    await release(provider, app, busybox_image, timers_spec, build)
    clock = FakeClock()
    minute = START.replace(second=0)
    try:
        first = runner(provider, clock)
        try:
            await first.beat()
            clock.at(1)
            await first.beat()
            await settled(first, app, "tick")
            slow_pid, lost_pid = first.state[(app, "slow")].running, first.state[(app, "lost")].running
            assert slow_pid and lost_pid
        finally:
            await first.close()  # the rack stops: the runs it started go on
        # the rack stopped just as `lost` started, before its pid was saved
        await provider.state.execute("UPDATE timers SET running = '' WHERE app = ? AND name = 'lost'", (app,))

        clock.now = minute + timedelta(minutes=1, seconds=20)
        second = runner(provider, clock)
        try:
            await second.load()
            listed = {timer.name: timer for timer in await second.list(app)}
            assert (listed["tick"].last_run, listed["tick"].last_exit) == (minute + timedelta(minutes=1), 3)
            assert listed["tick"].next_run == minute + timedelta(minutes=2)
            assert (listed["slow"].running, listed["slow"].last_exit) == (slow_pid, None)

            clock.at(2)
            await second.beat()  # tick runs again; slow and lost are still going: neither is doubled
            await settled(second, app, "tick")
            assert runs_of(app, "slow") == [slow_pid] and runs_of(app, "lost") == [lost_pid]
            assert second.state[(app, "lost")].running == lost_pid  # found on the Engine, followed from now on
            messages = await events(provider, app)
            assert messages.count("timer tick started") == 2 and messages.count("timer tick exited with code 3") == 2
            assert messages.count("timer slow started") == 1 and messages.count("timer lost started") == 1

            # the runs are followed to their end across the restart: their exit codes are kept
            for pid in (slow_pid, lost_pid):
                await provider.processes.stop(app, pid)
            await settled(second, app, "slow")
            await settled(second, app, "lost")
            listed = {timer.name: timer for timer in await second.list(app)}
            assert listed["slow"].running == "" and listed["slow"].last_exit is not None
            assert listed["lost"].running == "" and listed["lost"].last_exit is not None
        finally:
            await second.close()

        # down over minutes 3 and 4: runs that fell due meanwhile are not made up at the next start
        clock.at(4)
        clock.now += timedelta(seconds=30)
        third = runner(provider, clock)
        try:
            await third.beat()
            listed = {timer.name: timer for timer in await third.list(app)}
            assert listed["tick"].next_run == minute + timedelta(minutes=5)
            assert listed["tick"].last_run == minute + timedelta(minutes=2) and listed["tick"].last_exit == 3
            assert (await events(provider, app)).count("timer tick started") == 2
        finally:
            await third.close()
    finally:
        docker("rmi", image_name(RACK_NAME, app, "web", build), check=False)
