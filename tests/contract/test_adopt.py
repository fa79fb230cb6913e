"""The start steps of ``Provider.workers`` (``FormationAPI.adopt``, ``TimersAPI.adopt``) over every provider:
a rack restarted is a second provider opened on the first one's state (the same data dir and engine locally,
the same moto on aws) once the first one's workers have stopped; the second one's workers adopt what it left.

- ``local``: the real Docker Engine; the processes are containers of ``rack-test/busybox:1``;
- ``aws``: moto. Simulated: the builder (``play_builder``) and the ECS data plane: a task is a record pinned
  at RUNNING until it is stopped (no container runs), and ECS services never get tasks on moto, so the
  process the test follows there is a one-off task.
The timers run on a test clock (tests/clock.py), given to each provider's own timers before its workers start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from shared.manifest import Manifest, Service, Timer
from shared.models import App, ProcessRunOptions, TimerStatus
from shared.provider import Provider, load_provider
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.timers import AwsTimers
from shared.provider.local.apps import LocalApps
from shared.provider.local.timers import LocalTimers
from tests.clock import START, FakeClock
from tests.conftest import RACK_NAME
from tests.contract.conftest import running_workers, settings_for
from tests.contract.moto_server import register_container_instance
from tests.contract.test_builds_resources import built

WORKER = Service(name="worker", image="rack-test/busybox:1", command="sleep 3600")
TICK = Timer(name="tick", schedule="* * * * *", command="trap 'exit 143' TERM; sleep 300 & wait", service="worker")


class StatusWriter(Protocol):
    async def set_status(self, name: str, status: str, release: str | None = None) -> None: ...


def status_writer(provider: Provider) -> StatusWriter:
    """The provider's own write of an app's status (what a promote does first)."""
    assert isinstance(provider.apps, LocalApps | AwsApps)
    return provider.apps


@contextlib.asynccontextmanager
async def rack(provider_name: str, tmp_path: Path, clock: FakeClock | None = None) -> AsyncIterator[Provider]:
    """A provider on the state under ``tmp_path`` (its timers on ``clock``), without its workers."""
    async with load_provider(settings_for(provider_name, tmp_path)) as opened:
        if clock is not None:
            assert isinstance(opened.timers, LocalTimers | AwsTimers)
            opened.timers.clock = clock
        yield opened


async def beat(provider: Provider) -> None:
    """One beat of the provider's own scheduler, as its loop beats each second: once it returns, the timers'
    state is saved for the clock's time (a listing alone cannot tell a saved next run from a computed one)."""
    assert isinstance(provider.timers, LocalTimers | AwsTimers)
    await provider.timers.beat()


async def deployed(provider: Provider, provider_name: str, app: str, tmp_path: Path, manifest: Manifest) -> App:
    await provider.apps.create(app)
    build = await built(provider, provider_name, app, tmp_path, manifest)
    assert build.status == "complete", build.error
    await provider.releases.promote(app, build.release)
    settled = await provider.releases.settled(app, 120)
    assert (settled.status, settled.release) == ("running", build.release), settled
    return settled


async def until_listed(provider: Provider, app: str, want: str, ok: object, within: float = 30) -> TimerStatus:
    """The app's timer ``tick`` once ``ok(status)`` holds (``want`` says what is awaited, for the failure)."""
    last: TimerStatus | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                (last,) = await provider.timers.list(app)
                if ok(last):  # type: ignore[operator]
                    return last
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timer tick: {want} after {within} s; it is {last}") from None


async def test_a_restarted_provider_adopts_the_running_processes_and_ends_what_was_cut_short(
    provider_name: str, backend: str, busybox_image: str, tmp_path: Path
) -> None:
    async with rack(provider_name, tmp_path) as first:
        if provider_name == "aws":
            await asyncio.to_thread(register_container_instance, RACK_NAME)
        async with running_workers(first):
            served = await deployed(first, provider_name, "kept", tmp_path, Manifest(services={"worker": WORKER}))
            await first.processes.run(
                "kept", ProcessRunOptions(service="worker", image=busybox_image, command=["sleep", "300"])
            )
            before = sorted(p.id for p in await first.processes.list("kept", stats=False))
            assert len(before) == (1 if provider_name == "aws" else 2)  # moto gives ECS services no task
            await first.apps.create("fresh")
        # simulated: a promote of each app cut short by the restart (its first write made, nothing after it)
        await status_writer(first).set_status("kept", "updating")
        await status_writer(first).set_status("fresh", "updating")
    async with rack(provider_name, tmp_path) as second, running_workers(second):  # its start steps have run
        try:
            kept = await second.releases.settled("kept", 60)
            assert (kept.status, kept.release) == ("running", served.release)  # the serving release goes on
            assert sorted(p.id for p in await second.processes.list("kept", stats=False)) == before  # adopted
            assert (await second.releases.settled("fresh", 30)).status == "failed"  # nothing ever served
            assert [(f.name, f.count) for f in await second.formation.get("kept")] == [("worker", 1)]
        finally:
            await second.apps.delete("kept")


async def test_a_restarted_provider_takes_the_timers_state_and_follows_the_run_it_left_going(
    provider_name: str, backend: str, busybox_image: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    manifest = Manifest(services={"worker": WORKER}, timers={"tick": TICK})
    async with rack(provider_name, tmp_path, clock) as first:
        if provider_name == "aws":
            await asyncio.to_thread(register_container_instance, RACK_NAME)
        async with running_workers(first):
            await deployed(first, provider_name, "ticking", tmp_path, manifest)
            minute = START.replace(second=0)
            await beat(first)
            assert (await first.timers.list("ticking"))[0].next_run == minute + timedelta(minutes=1)
            clock.at(1)
            await beat(first)
            going = await until_listed(first, "ticking", "a run going", lambda s: s.running != "")
            assert going.last_run == clock.now
    clock.now += timedelta(seconds=20)  # the rack was down for a while, within the same minute
    async with rack(provider_name, tmp_path, clock) as second, running_workers(second):
        try:
            adopted = (await second.timers.list("ticking"))[0]
            assert (adopted.last_run, adopted.running) == (going.last_run, going.running)
            clock.at(2)  # due again while the run it left still goes: not doubled, its next run moves on
            skipped = await until_listed(
                second, "ticking", "next run at 00:03", lambda s: s.next_run == minute + timedelta(minutes=3)
            )
            assert (skipped.last_run, skipped.running) == (going.last_run, going.running)
            runs = [p for p in await second.processes.list("ticking", stats=False) if p.id == going.running]
            assert len(runs) == 1
            await second.processes.stop("ticking", going.running)
            ended = await until_listed(second, "ticking", "its run followed to its end", lambda s: s.running == "")
            assert ended.last_run == going.last_run
            if provider_name == "local":  # moto reports no exit code (tests/aws/test_timers.py has the agent's)
                assert ended.last_exit == 143
        finally:
            await second.apps.delete("ticking")
