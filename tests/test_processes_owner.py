"""The one-offs' work under the workers' owner (:meth:`LocalProcesses.loops`), against the real Docker Engine:
time limits, interactive runs whose service died (``kill -9`` included), sandboxes no live process holds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.models import ProcessRunOptions
from shared.provider.local import LocalProvider
from shared.provider.local.processes import LocalProcesses
from shared.provider.local.runners import Runner
from shared.provider.workers import supervise
from shared.stream import Terminal
from tests.conftest import RACK_NAME
from tests.test_processes_provider import (
    docker,
    on_rack_network,
    processes_of,
    provider,
    run_output,
    sleeper,
    until,
)

__all__ = ["provider"]  # the fixture, shared with the processes' other tests
ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def owner(provider: LocalProvider) -> AsyncIterator[None]:
    """The one-offs' loops of the workers' owner running (as in the logs service), once their start step ran."""
    started = asyncio.Event()
    task = asyncio.create_task(supervise(processes_of(provider).loops(), started.set))
    try:
        await asyncio.wait_for(started.wait(), 30)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task



async def test_a_run_past_its_time_limit_is_stopped(
    provider: LocalProvider, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.provider.local.processes.REAP_SECONDS", 0.5)
    await provider.apps.create("limited")
    process = await provider.processes.run(
        "limited", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "3600"]), time_limit=1
    )
    async with owner(provider):  # the time limit is the owner's, whichever service ran it
        await until(lambda: not docker("ps", "-aq", "--filter", f"id={process.id}").strip(), within=15)


async def test_the_owner_ends_interactive_runs_whose_runner_died_and_no_other(
    provider: LocalProvider, busybox_image: str
) -> None:
    await provider.apps.create("restart")
    stream = await provider.processes.run_interactive(
        "restart", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "3600"])
    )
    await stream.start(Terminal())
    [process] = await provider.processes.list("restart")
    detached = await sleeper(provider, "restart")
    processes = processes_of(provider)
    await processes.reap()  # its runner (this process) lives: its stream is served
    assert sorted(p.id for p in await provider.processes.list("restart")) == sorted([process.id, detached])
    provider.runner.release()  # as when the processes service holding its stream dies
    await processes.reap()  # as the owner's start step (and each round) does
    assert [p.id for p in await provider.processes.list("restart")] == [detached]
    await stream.close()


OWNER_OF_A_RUN = """
import asyncio, sys
from pathlib import Path
from shared.config import RackSettings
from shared.models import ProcessRunOptions
from shared.provider import load_provider
from shared.stream import Terminal

async def main() -> None:
    data, rack, app, image = sys.argv[1:]
    async with load_provider(RackSettings(data_dir=Path(data), name=rack)) as provider:
        options = ProcessRunOptions(service="web", image=image, command=["sleep", "3600"])
        stream = await provider.processes.run_interactive(app, options)
        await stream.start(Terminal())
        print(stream.container_id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""
"""A processes service in miniature: another process of the rack holding an interactive run's stream."""


async def test_an_interactive_run_whose_service_is_killed_is_ended_by_the_owner(
    provider: LocalProvider, busybox_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.provider.local.processes.REAP_SECONDS", 0.5)
    await provider.apps.create("killed")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER_OF_A_RUN, str(tmp_path), RACK_NAME, "killed", busybox_image,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    container = ""
    try:
        assert child.stdout is not None
        container = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        assert container, "the child process did not start its run"
        async with owner(provider):
            await processes_of(provider).reap()  # a round with the runner alive: the run goes on
            assert docker("inspect", "--format", "{{.State.Running}}", container).strip() == "true"
            child.send_signal(signal.SIGKILL)
            await child.wait()
            killed = time.monotonic()
            await until(lambda: not docker("ps", "-aq", "--filter", f"id={container}").strip(), within=15)
            print(f"ended {time.monotonic() - killed:.2f} s after the kill")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        if container:
            docker("rm", "-f", container, check=False)


async def test_the_owner_removes_the_sandboxes_of_a_dead_process_unless_used_and_those_of_deleted_apps(
    provider: LocalProvider, busybox_image: str, tmp_path: Path
) -> None:
    processes = await on_rack_network(provider)
    for app in ("kept", "busy", "ghost"):
        await provider.apps.create(app)
        await run_output(provider, app, "true", busybox_image)
        await until(lambda app=app: processes.sandboxes.idle.get(app))
    [(sandbox, _)], [(busy, _)], [(ghost, _)] = (processes.sandboxes.idle[app] for app in ("kept", "busy", "ghost"))
    user = docker(
        "run", "-d", "--network", f"container:{busy}", "--label", f"convox.rack={RACK_NAME}", busybox_image,
        "sleep", "3600",
    ).strip()  # fmt: skip
    await provider.state.execute("DELETE FROM apps WHERE name = 'ghost'")  # its deletion cut off before the end
    other = LocalProcesses(processes.docker, processes.apps, RACK_NAME, Runner(tmp_path / "runners"))  # the owner
    try:
        await other.sweep()  # the pool that holds them lives: only the deleted app's goes
        await asyncio.gather(*other.sandboxes.tasks)
        assert not docker("ps", "-aq", "--filter", f"id={ghost}").strip()
        assert docker("ps", "-q", "--filter", f"id={sandbox}").strip() and not other.sandboxes.idle
        started = time.monotonic()
        docker("stop", "-t", "10", sandbox)  # its init passes SIGTERM on: the pause program ends at once
        assert time.monotonic() - started < 5
        docker("start", sandbox)
        provider.runner.release()  # the process whose pool held them dies
        await other.sweep()
        await asyncio.gather(*other.sandboxes.tasks)
        assert not docker("ps", "-aq", "--filter", f"id={sandbox}").strip()  # no live process holds it
        assert docker("ps", "-q", "--filter", f"id={busy}").strip()  # a live container still uses it: left to it
        assert not other.sandboxes.idle  # the owner's pool takes none of them
    finally:
        await other.close()
        docker("rm", "-f", user)
    provider.runner.hold()
    await run_output(provider, "kept", "true", busybox_image)  # the dead pool's sandbox is gone: a new one
    await until(lambda: processes.sandboxes.idle.get("kept") and processes.sandboxes.idle["kept"][0][0] != sandbox)
    await provider.apps.delete("kept")
    assert not docker("ps", "-aq", "--filter", "label=convox.sandbox=kept").strip()
