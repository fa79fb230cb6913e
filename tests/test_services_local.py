"""The local provider's backing services against the real Docker Engine: what a (re)start of the rack does
with them (`adopt`), and what a create leaves behind when it fails."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import NotFound
from shared.provider.local import LocalProvider
from tests.conftest import RACK_NAME
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


async def test_adopt_brings_back_a_missing_server_with_its_data(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        created = await provider.resources.create("redis", "cache")
        assert (created.status, created.url) == ("creating", "redis://:***@cache:6379/0")
        await running(provider, "cache")
        password = (await provider.resources.get("cache", reveal=True)).url.split(":")[2].split("@")[0]
        cli = ["redis-cli", "--no-auth-warning", "-a", password]
        assert docker("exec", server("cache").strip(), *cli, "set", "kept", "yes").strip() == "OK"
        docker("rm", "-f", server("cache").strip())
        assert (await provider.resources.get("cache")).status == "stopped"
    async with LocalProvider(settings) as provider:  # the rack starts again
        await provider.resources.adopt()
        await running(provider, "cache")
        assert docker("exec", server("cache").strip(), *cli, "get", "kept").strip() == "yes"
        docker("stop", server("cache").strip())  # stopped by hand: started again at the next start
        assert (await provider.resources.get("cache")).status == "stopped"
    async with LocalProvider(settings) as provider:
        await provider.resources.adopt()
        await running(provider, "cache")
        await provider.resources.delete("cache")
        assert server("cache") == ""
        assert docker("volume", "ls", "-q", "--filter", f"name={RACK}-resource-cache") == ""


async def test_a_create_cut_short_is_undone_when_the_rack_starts(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        await provider.state.execute(
            "INSERT INTO resources (name, type, status, image, password, created) "
            "VALUES ('half', 'postgres', 'creating', 'rack-local/postgres:bookworm', 'x', '2020-01-01T00:00:00')"
        )
        docker("volume", "create", "--label", f"convox.rack={RACK}", f"{RACK}-resource-half")
        await provider.resources.adopt()
        await asyncio.gather(*provider.resources.tasks, return_exceptions=True)
        half = await provider.resources.get("half")  # failed, saying why, and holding nothing
        assert (half.status, half.message) == ("failed", "postgres half was being created when the rack stopped")
        assert docker("volume", "ls", "-q", "--filter", f"name={RACK}-resource-half") == ""
        await provider.resources.delete("half")
        with pytest.raises(NotFound):
            await provider.resources.get("half")


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
