"""Crash consistency of the local provider against SQLite and the real Docker Engine: multi-row changes land
together, a damaged app does not stop the others' start, concurrent environment changes all land, a refused
scale leaves no trace, and formation is kept when processes are stopped or killed from outside."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import NotFound, RackError
from shared.manifest import Manifest, Service
from shared.models import FormationUpdate
from shared.provider import load_provider
from shared.provider.local import LocalProvider
from shared.provider.local.docker import LABEL_APP, LABEL_RACK, LABEL_TYPE
from shared.provider.local.images import image_name
from tests.conftest import RACK_NAME


def open_provider(data_dir: Path) -> LocalProvider:
    opened = load_provider(RackSettings(data_dir=data_dir, name=RACK_NAME))
    assert isinstance(opened, LocalProvider)
    return opened


@pytest.fixture
async def provider(tmp_path: Path, docker_engine: str) -> AsyncIterator[LocalProvider]:
    async with open_provider(tmp_path) as opened:
        yield opened
        await opened.formation.close()
        for app in await opened.apps.list():
            with contextlib.suppress(RackError):
                await opened.apps.delete(app.name)


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


async def until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def released(provider: LocalProvider, app: str, busybox_image: str, count: int = 1) -> str:
    """``app`` with a complete build (its worker image tagged from busybox) and a release of it, active."""
    await provider.apps.create(app)
    manifest = Manifest(services={"worker": Service(name="worker", command="sleep 3600")})
    manifest.services["worker"].scale.count = count
    build = "B" + "QWERTYUIOP"
    await provider.state.execute(
        "INSERT INTO builds (id, app, status, manifest, created, runner) VALUES (?, ?, 'complete', ?, ?, ?)",
        (build, app, manifest.model_dump_json(), datetime.now(UTC).isoformat(), provider.runner.hold()),
    )
    docker("tag", busybox_image, image_name(RACK_NAME, app, "worker", build))
    release = await provider.releases.create(app, build=build)
    await provider.formation.converge(release)
    await provider.apps.set_status(app, "running", release=release.id)
    return release.id


def workers(app: str, status: str = "running") -> list[str]:
    out = docker(
        "ps", "-q", "--filter", f"label={LABEL_RACK}={RACK_NAME}", "--filter", f"label={LABEL_APP}={app}",
        "--filter", f"label={LABEL_TYPE}=worker", "--filter", f"status={status}",
    )  # fmt: skip
    return out.split()


async def test_an_app_deletion_cut_short_leaves_the_app_whole(provider: LocalProvider) -> None:
    await provider.apps.create("whole")
    await provider.releases.create("whole", env={"A": "1"})
    await provider.apps.set_status("whole", "running", release=(await provider.releases.list("whole"))[0].id)
    # simulated crash: the statement removing the app's own row fails, as a kill at that moment would cut it
    await provider.state.execute(
        "CREATE TRIGGER crash BEFORE DELETE ON apps BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
    )
    with pytest.raises(Exception, match="simulated crash"):
        await provider.apps.delete("whole")
    assert len(await provider.releases.list("whole")) == 1  # not an app without its releases
    assert (await provider.apps.get("whole")).status == "deleting"
    await provider.state.execute("DROP TRIGGER crash")
    await provider.formation.adopt()  # the next start finishes the deletion
    await until(lambda: _gone(provider, "whole"))
    assert await provider.state.fetch_all("SELECT * FROM releases WHERE app = 'whole'") == []


async def _gone(provider: LocalProvider, app: str) -> bool:
    return app not in [a.name for a in await provider.apps.list()]


async def test_a_damaged_app_is_skipped_at_start_and_reported(provider: LocalProvider, busybox_image: str) -> None:
    await released(provider, "healthy", busybox_image)
    await provider.apps.create("damaged")
    await provider.apps.set_status("damaged", "running", release="RMISSINGREL")  # its release was lost
    await provider.formation.adopt()  # does not raise
    assert (await provider.apps.get("damaged")).status == "failed"
    events = await provider.state.fetch_all("SELECT message FROM events WHERE app = 'damaged'")  # its log's events
    assert [row["message"] for row in events] == ["app skipped at start: no such release: RMISSINGREL"]
    assert (await provider.apps.get("healthy")).status == "running"


async def test_concurrent_environment_changes_from_two_services_all_land(tmp_path: Path, docker_engine: str) -> None:
    async with open_provider(tmp_path) as apps, open_provider(tmp_path) as provisioner:
        await apps.apps.create("both")
        await asyncio.gather(
            *(apps.releases.change_env("both", set={f"ENV_{i}": "x"}) for i in range(10)),
            *(provisioner.releases.change_env("both", set={f"LINK_{i}_URL": "y"}) for i in range(10)),
        )
        env = await apps.releases.environment("both")
        assert sorted(env) == sorted([f"ENV_{i}" for i in range(10)] + [f"LINK_{i}_URL" for i in range(10)])
        with pytest.raises(NotFound, match="no such environment variable: NOPE"):
            await apps.releases.change_env("both", unset=["NOPE"])
        assert len(await apps.releases.list("both", limit=100)) == 20  # the refused change made no release


async def test_a_scale_the_engine_refuses_is_not_saved(provider: LocalProvider, busybox_image: str) -> None:
    await released(provider, "refused", busybox_image)
    # simulated: a request past the API's validation that the Engine refuses (it wants at least 6 MB)
    with pytest.raises(RackError):
        await provider.formation.scale("refused", "worker", FormationUpdate.model_construct(memory=4, count=None))
    assert [(f.name, f.memory) for f in await provider.formation.get("refused")] == [("worker", 256)]
    scaled = await provider.formation.scale("refused", "worker", FormationUpdate(count=2))  # later scales work
    assert (scaled.count, scaled.running, scaled.memory) == (2, 2, 256)


async def test_formation_replaces_processes_stopped_or_killed_from_outside(
    provider: LocalProvider, busybox_image: str
) -> None:
    await released(provider, "kept", busybox_image, count=2)
    started = asyncio.Event()
    running = asyncio.create_task(provider.workers(started.set))  # as the logs service runs them
    try:
        await asyncio.wait_for(started.wait(), 30)
        before = workers("kept")
        assert len(before) == 2
        docker("kill", before[0])
        await until(lambda: _count(provider, "kept", 2, without=before[0]))
        one = workers("kept")[0]
        pid = next(p.id for p in await provider.processes.list("kept", stats=False) if one.startswith(p.id[:12]))
        await provider.processes.stop("kept", pid)
        await until(lambda: _count(provider, "kept", 2, without=one))
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _count(provider: LocalProvider, app: str, count: int, without: str) -> bool:
    running = workers(app)
    return len(running) == count and not any(without.startswith(r) or r.startswith(without) for r in running)
