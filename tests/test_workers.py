"""The rack's background work has one owner (``provider.workers()``, run by the logs service): its loops are
supervised (one failing is logged and restarted, the others go on), and a promote asked from another service
(another provider on the same state, as the apps service or the provisioner is) is rolled out by the owner,
with its refusals as the same :mod:`shared.errors` types and a failed roll-out's reason, and cancelled from
there too; a scale asked there waits for the owner's roll-out of the app (their lock is one across
processes); an owner killed with -9 in the middle of a roll-out leaves it failed cleanly at its next start,
the previous release serving, and frees the app's lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest, Conflict, NotFound, RackError
from shared.manifest import Health, Manifest, Service
from shared.models import FormationUpdate
from shared.provider import load_provider
from shared.provider.local import LocalProvider
from shared.provider.local.bell import Bell
from shared.provider.local.docker import LABEL_APP, LABEL_RACK, LABEL_RELEASE
from shared.provider.local.images import image_name
from shared.provider.workers import Loop, supervise
from tests.conftest import RACK_NAME

# ---- the supervisor ------------------------------------------------------------------------------------


async def test_one_loop_crashing_is_logged_and_restarted_while_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks: list[float] = []
    runs = 0
    starts = 0
    started = asyncio.Event()
    crashed_often = asyncio.Event()

    async def ticking() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def crashing() -> None:
        nonlocal runs
        runs += 1
        if runs == 4:
            crashed_often.set()
        await asyncio.sleep(0.02)
        raise ValueError(f"crash {runs}")

    async def flaky_start() -> None:
        nonlocal starts
        starts += 1
        if starts < 3:
            raise RackError("engine away", 503)

    loops = [Loop("ticking", ticking), Loop("crashing", crashing, start=flaky_start)]
    task = asyncio.create_task(supervise(loops, started.set, backoff=(0.01, 0.02)))
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert starts == 3  # started only once every start step ran
        await asyncio.wait_for(crashed_often.wait(), 5)
        before = len(ticks)
        await asyncio.sleep(0.1)
        assert len(ticks) > before  # still ticking through the crashes
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    err = caplog.text
    assert "worker=crashing" in err and "crash 3" in err and "engine away" in err
    assert "worker=ticking" not in err


async def test_cancelling_the_workers_ends_every_loop() -> None:
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    started = asyncio.Event()
    task = asyncio.create_task(
        supervise([Loop("a", lambda: forever("a")), Loop("b", lambda: forever("b"))], started.set)
    )
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sorted(ended) == ["a", "b"]


# ---- the bell between processes -----------------------------------------------------------------------------


async def test_a_ring_wakes_another_bells_waiter_at_once_and_clears_a_dead_processs_socket(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("b")
    ringer, waiter = Bell(directory), Bell(directory)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(directory / "1-0.sock"))
    dead.close()  # its file stays, as a process killed with -9 leaves it
    try:
        await waiter.open()
        seen = waiter.rung
        began = time.monotonic()
        ringer.ring()
        await waiter.wait(seen, 10)
        assert waiter.rung == seen + 1 and time.monotonic() - began < 5
        assert not (directory / "1-0.sock").exists()
        seen = waiter.rung
        began = time.monotonic()
        await waiter.wait(seen, 0.2)  # nothing rang: back after its timeout
        assert waiter.rung == seen and time.monotonic() - began >= 0.15
    finally:
        await ringer.close()
        await waiter.close()
    assert not list(directory.iterdir())


# ---- promotes from another service -------------------------------------------------------------------------


def open_provider(data_dir: Path) -> LocalProvider:
    opened = load_provider(RackSettings(data_dir=data_dir, name=RACK_NAME))
    assert isinstance(opened, LocalProvider)
    return opened


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


async def until(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("w")  # short: the state's sockets live under it


@contextlib.asynccontextmanager
async def owner(data_dir: Path) -> AsyncIterator[LocalProvider]:
    """A provider running the workers, as the logs service does."""
    async with open_provider(data_dir) as opened:
        started = asyncio.Event()
        task = asyncio.create_task(opened.workers(started.set))
        try:
            await asyncio.wait_for(started.wait(), 30)
            yield opened
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def asker(data_dir: Path, docker_engine: str) -> AsyncIterator[LocalProvider]:
    """A provider of another service (the provisioner's): it runs no workers."""
    async with open_provider(data_dir) as opened:
        yield opened
        for app in await opened.apps.list():
            with contextlib.suppress(RackError):
                await opened.apps.delete(app.name)
        await opened.formation.close()


async def release_of(provider: LocalProvider, app: str, image: str, web: Service, build: str) -> str:
    """A release of a complete build whose ``web`` image is ``image`` (tagged), not promoted."""
    with contextlib.suppress(RackError):
        await provider.apps.create(app)
    manifest = Manifest(services={"web": web})
    await provider.state.execute(  # held by this process's runner, as a build of the builds service is
        "INSERT INTO builds (id, app, status, manifest, created, runner) VALUES (?, ?, 'complete', ?, ?, ?)",
        (build, app, manifest.model_dump_json(), datetime.now(UTC).isoformat(), provider.runner.hold()),
    )
    docker("tag", image, image_name(RACK_NAME, app, "web", build))
    return (await provider.releases.create(app, build=build)).id


def sleeping() -> Service:
    return Service(name="web", command="sleep 3600")


def containers_of(app: str, release: str) -> list[str]:
    labels = (f"{LABEL_RACK}={RACK_NAME}", f"{LABEL_APP}={app}", f"{LABEL_RELEASE}={release}")
    return docker("ps", "-q", *(arg for label in labels for arg in ("--filter", f"label={label}"))).split()


def slow() -> Service:
    """Never healthy for a minute (nothing listens on its port): a roll-out that stays in flight."""
    return Service(name="web", command="sleep 3600", port=3000, internal=True, health=Health(grace=60))


async def test_a_promote_from_another_service_rolls_out_under_the_owner_with_typed_errors(
    data_dir: Path, asker: LocalProvider, busybox_image: str
) -> None:
    async with owner(data_dir):
        first = await release_of(asker, "asked", busybox_image, sleeping(), "BFIRSTBUILD")
        promoted = await asker.releases.promote("asked", first)
        assert promoted.status == "updating"
        settled = await asker.releases.settled("asked", 60)
        assert (settled.status, settled.release) == ("running", first)
        assert containers_of("asked", first)

        pending = await release_of(asker, "asked", busybox_image, slow(), "BSLOWBUILDS")
        await asker.releases.promote("asked", pending)
        with pytest.raises(Conflict, match="already updating"):  # the owner's refusal, the same type here
            await asker.releases.promote("asked", pending)
        await asker.formation.cancel("asked")  # from the other service: the roll-out runs in the owner
        settled = await asker.releases.settled("asked", 60)
        assert (settled.release, settled.failed_release, settled.failure) == (first, pending, "cancelled")

        failing = Service(name="web", command="false", port=3000, internal=True)
        broken = await release_of(asker, "asked", busybox_image, failing, "BBROKENBUID")
        await asker.releases.promote("asked", broken)
        settled = await asker.releases.settled("asked", 60)
        assert (settled.status, settled.release, settled.failed_release) == ("running", first, broken)
        assert "web exited with code 1 before it was healthy" in settled.failure

        with pytest.raises(NotFound, match="no such release"):
            await asker.releases.promote("asked", "RNOSUCHRELE")
        bare = (await asker.releases.create("asked", env={"A": "1"})).id
        await asker.state.execute("UPDATE releases SET build = '', manifest = '' WHERE id = ?", (bare,))
        with pytest.raises(BadRequest, match="has no build to run"):
            await asker.releases.promote("asked", bare)


async def test_a_promote_waits_for_the_racks_own_pass_over_the_app_instead_of_being_refused(
    data_dir: Path, asker: LocalProvider, busybox_image: str
) -> None:
    async with owner(data_dir) as owning:
        first = await release_of(asker, "passed", busybox_image, sleeping(), "BPASSFIRST1")
        await asker.releases.promote("passed", first)
        assert (await asker.releases.settled("passed", 60)).release == first
        second = await release_of(asker, "passed", busybox_image, sleeping(), "BPASSSECND1")
        async with owning.formation.locks("passed"):  # what a reconciliation or an adoption pass holds
            promoted = await asker.releases.promote("passed", second)
            assert promoted.status == "updating"
            with pytest.raises(Conflict, match="already updating"):  # a user's roll-out is still refused
                await asker.releases.promote("passed", second)
            with pytest.raises(Conflict, match="updating"):
                await owning.formation.restart("passed")
        settled = await asker.releases.settled("passed", 60)
        assert (settled.status, settled.release) == ("running", second)
        assert containers_of("passed", second)
        # the roll-out ended once the new release served; the old process stops after, still under the lock
        await until(lambda: asyncio.sleep(0, not containers_of("passed", first)), within=15)
        third = await release_of(asker, "passed", busybox_image, sleeping(), "BPASSTHIRD1")
        async with owning.formation.locks("passed"):  # the roll-out waits for the app (as behind a retirement)
            await asker.releases.promote("passed", third)
            await owning.formation.cancel("passed")  # cancelled before it began: over, not left updating
            settled = await asker.releases.settled("passed", 10)
            assert (settled.status, settled.release) == ("running", second)
            assert (settled.failed_release, settled.failure) == (third, "cancelled")
        await asker.apps.set_status("passed", "deleting")  # as a deletion in the apps service begins
        with pytest.raises(Conflict, match="being deleted"):
            await asker.releases.promote("passed", first)
        assert (await asker.apps.get("passed")).status == "deleting"


async def test_a_scale_from_another_service_waits_for_the_owners_roll_out_of_the_app(
    data_dir: Path, asker: LocalProvider, busybox_image: str
) -> None:
    async with owner(data_dir) as owning:
        first = await release_of(asker, "locked", busybox_image, sleeping(), "BFIRSTBUILD")
        await asker.releases.promote("locked", first)
        assert (await asker.releases.settled("locked", 60)).release == first
        pending = await release_of(asker, "locked", busybox_image, slow(), "BSLOWBUILDS")
        await asker.releases.promote("locked", pending)
        await until(lambda: asyncio.sleep(0, bool(containers_of("locked", pending))))
        assert asker.formation.locks("locked").locked()  # held by the owner's roll-out, in its own lock
        with pytest.raises(Conflict, match="is updating"):
            await asker.formation.restart("locked")
        scaling = asyncio.create_task(asker.formation.scale("locked", "web", FormationUpdate(count=2)))
        done, _ = await asyncio.wait({scaling}, timeout=1.0)
        assert not done  # it waits for the roll-out, which would otherwise race it
        assert len(containers_of("locked", first)) == 1
        await owning.formation.cancel("locked")
        scaled = await asyncio.wait_for(scaling, 60)
        assert (scaled.count, scaled.running) == (2, 2)
        assert len(containers_of("locked", first)) == 2
        assert not containers_of("locked", pending)
        assert not asker.formation.locks("locked").locked()


OWNER = """
import asyncio, sys
from pathlib import Path
from shared.config import RackSettings
from shared.provider import load_provider

async def main() -> None:
    async with load_provider(RackSettings(data_dir=Path(sys.argv[1]), name=sys.argv[2])) as provider:
        await provider.workers(lambda: print("started", flush=True))

asyncio.run(main())
"""


async def test_an_owner_killed_mid_roll_out_fails_it_cleanly_at_its_next_start(
    data_dir: Path, asker: LocalProvider, busybox_image: str
) -> None:
    first = await release_of(asker, "killed", busybox_image, sleeping(), "BFIRSTBUILD")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OWNER,
        str(data_dir),
        RACK_NAME,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 60) == b"started\n"
        await asker.releases.promote("killed", first)
        assert (await asker.releases.settled("killed", 60)).release == first
        second = await release_of(asker, "killed", busybox_image, slow(), "BSLOWBUILDS")
        await asker.releases.promote("killed", second)
        await until(lambda: asyncio.sleep(0, bool(containers_of("killed", second))))
        assert asker.formation.locks("killed").locked()  # the roll-out holds the app, in the owner's process
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (await asker.apps.get("killed")).status == "updating"  # nobody finishes it meanwhile
    assert not asker.formation.locks("killed").locked()  # but the dead owner's roll-out holds the app no more
    async with owner(data_dir):
        settled = await asker.releases.settled("killed", 30)
        assert (settled.status, settled.release, settled.failed_release) == ("running", first, second)
        assert "interrupted by a restart" in settled.failure
        await until(lambda: asyncio.sleep(0, not containers_of("killed", second)))
        assert containers_of("killed", first)
