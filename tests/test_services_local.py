"""The local provider's backing services against the real Docker Engine: what the owner of the background work
does with them (servers gone, work whose process died), and what a create leaves behind when it fails."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import NotFound
from shared.provider.local import LocalProvider
from shared.provider.local.runners import Runner
from tests.conftest import RACK_NAME, ROOT
from tests.contract.conftest import running_workers
from tests.test_services import LOCAL_IMAGES, remove_services, require_images

RACK = RACK_NAME + "-res"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=120).stdout


def server(name: str) -> str:
    return docker("ps", "-aq", "--filter", f"label=convox.rack={RACK}", "--filter", f"label=convox.resource={name}")


@pytest.fixture
async def settings(tmp_path: Path, docker_engine: str) -> AsyncIterator[RackSettings]:
    require_images()
    settings = RackSettings(data_dir=tmp_path, name=RACK)
    async with LocalProvider(settings) as provider:
        await provider.params.set(LOCAL_IMAGES)
    try:
        yield settings
    finally:
        cleanup()


def cleanup() -> None:
    remove_services(RACK)
    subprocess.run(["docker", "network", "rm", f"convox-{RACK}"], capture_output=True, check=False)


async def running(provider: LocalProvider, name: str, within: float = 60) -> None:
    for _ in range(int(within / 0.5)):
        if (await provider.resources.get(name)).status == "running":
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{name} is not running after {within}s")


def cli(password: str) -> list[str]:
    return ["redis-cli", "--no-auth-warning", "-a", password]


async def test_the_owner_brings_back_a_missing_server_with_its_data(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        created = await provider.resources.create("redis", "cache")
        assert (created.status, created.url) == ("creating", "redis://:***@cache:6379/0")
        await running(provider, "cache")
        password = (await provider.resources.get("cache", reveal=True)).url.split(":")[2].split("@")[0]
        assert docker("exec", server("cache").strip(), *cli(password), "set", "kept", "yes").strip() == "OK"
    async with LocalProvider(settings) as provider, running_workers(provider):  # the rack starts again, its owner runs
        first = server("cache").strip()
        docker("rm", "-f", first)  # gone while the owner runs: back within a pass, with the volume's data
        assert (await provider.resources.get("cache")).status == "stopped"
        await running(provider, "cache", within=30)
        assert server("cache").strip() not in ("", first)
        assert docker("exec", server("cache").strip(), *cli(password), "get", "kept").strip() == "yes"
        docker("stop", server("cache").strip())  # stopped by hand: left so while this owner runs...
        await provider.resources.reconcile()
        assert (await provider.resources.get("cache")).status == "stopped"
    async with LocalProvider(settings) as provider, running_workers(provider):  # ...and started again at its next start
        await running(provider, "cache", within=30)
        await provider.resources.delete("cache")
        assert server("cache") == ""
        assert docker("volume", "ls", "-q", "--filter", f"name={RACK}-resource-cache") == ""


async def test_the_owner_undoes_a_create_cut_short_only_once_its_runner_is_dead(settings: RackSettings) -> None:
    other = Runner(settings.data_dir / "runners")  # another process of the rack, alive: its work is its own
    async with LocalProvider(settings) as provider:
        await provider.state.execute(
            "INSERT INTO resources (name, type, status, image, password, created, runner) VALUES ('half', "
            "'postgres', 'creating', 'rack-local/postgres:bookworm', 'x', '2020-01-01T00:00:00', ?), ('old', "
            "'redis', 'deleting', 'rack-local/redis:bookworm', 'x', '2020-01-01T00:00:00', '')",
            (other.hold(),),
        )
        docker("volume", "create", "--label", f"convox.rack={RACK}", f"{RACK}-resource-half")
        await provider.resources.reconcile()
        await asyncio.gather(*provider.resources.tasks, return_exceptions=True)
        with pytest.raises(NotFound):  # a deletion of no runner (a data dir from before runners): finished
            await provider.resources.get("old")
        assert (await provider.resources.get("half")).status == "creating"  # its runner lives: untouched
        assert docker("volume", "ls", "-q", "--filter", f"name={RACK}-resource-half") != ""
        other.release()  # exactly what its process's death does to the lock
        await provider.resources.reconcile()
        await asyncio.gather(*provider.resources.tasks, return_exceptions=True)
        half = await provider.resources.get("half")  # failed, saying why, and holding nothing
        assert (half.status, half.message) == ("failed", "postgres half was being created when its process stopped")
        assert docker("volume", "ls", "-q", "--filter", f"name={RACK}-resource-half") == ""
        await provider.resources.delete("half")
        with pytest.raises(NotFound):
            await provider.resources.get("half")


CREATOR = """
import asyncio, sys
from pathlib import Path
from shared.config import RackSettings
from shared.provider.local import LocalProvider
from shared.provider.local.runners import Runner

async def main() -> None:
    async with LocalProvider(RackSettings(data_dir=Path(sys.argv[1]), name=sys.argv[2])) as provider:
        async def killed_before_it_sees_it_answer(record: object, container: str) -> None:
            print(container, flush=True)
            await asyncio.Event().wait()

        provider.resources._wait_ready = killed_before_it_sees_it_answer  # type: ignore[method-assign]
        await provider.resources.create("redis", "cache")
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_creation_whose_process_is_killed_is_finished_by_the_owner(settings: RackSettings) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CREATOR, str(settings.data_dir), RACK,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        container = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        assert container and server("cache").strip() == container[:12]  # its server runs, the record is creating
        async with LocalProvider(settings) as provider:
            row = await provider.state.fetch_one("SELECT status, runner FROM resources WHERE name = 'cache'")
            assert row is not None and row["status"] == "creating"
            creator = row["runner"]
            for _ in range(2):  # the creator lives: the owner's passes leave its work alone
                await provider.resources.reconcile()
                assert not provider.resources.owned and not provider.resources.tasks
            assert (await provider.resources.get("cache")).status == "creating"
            child.send_signal(signal.SIGKILL)  # mid-way, lock held: the kernel drops it
            await child.wait()
            async with running_workers(provider):
                await running(provider, "cache", within=30)  # taken over and finished, not made again
            assert server("cache").strip() == container[:12]
            row = await provider.state.fetch_one("SELECT runner FROM resources WHERE name = 'cache'")
            assert row is not None and row["runner"] not in ("", creator)
            password = (await provider.resources.get("cache", reveal=True)).url.split(":")[2].split("@")[0]
            assert docker("exec", container, *cli(password), "ping").strip() == "PONG"
            await provider.resources.delete("cache")
            assert server("cache") == ""
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_a_failed_create_leaves_no_container_or_volume_and_a_record_saying_why(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        await provider.params.set({"postgres_image": "rack-test/missing:1"})
        assert (await provider.resources.create("postgres", "gone")).status == "creating"  # at once
        await asyncio.gather(*provider.resources.tasks, return_exceptions=True)
        (gone,) = await provider.resources.list()
        assert gone.status == "failed" and "rack-test/missing:1 is not on the engine" in gone.message
        assert server("gone") == ""
        await provider.resources.delete("gone")
        assert await provider.resources.list() == []
        assert docker("volume", "ls", "-q", "--filter", f"label=convox.rack={RACK}") == ""
        await provider.params.set({"postgres_image": ""})  # back to the default
        assert (await provider.params.get())["postgres_image"] == "postgres:16"


async def test_a_service_is_creating_until_its_server_accepts_connections(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        assert (await provider.resources.create("mysql", "db")).status == "creating"  # returned at once
        seen: list[str] = []
        while not seen or seen[-1] != "running":
            seen.append((await provider.resources.get("db")).status)
            assert len(seen) < 3000, seen
            await asyncio.sleep(0.05)
        # creating until the server accepts connections, then running
        assert seen[0] == "creating" and set(seen) == {"creating", "running"}
        assert "creating" not in seen[seen.index("running") :]
        assert [(r.name, r.type, r.status) for r in await provider.resources.list()] == [("db", "mysql", "running")]
        assert (await provider.resources.get("db")).url == "mysql://app:***@db:3306/app"
        await provider.resources.delete("db")
        assert await provider.resources.list() == []
