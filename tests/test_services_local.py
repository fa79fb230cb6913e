"""The local provider's backing services against the real Docker Engine: what a (re)start of the rack does
with them (`adopt`), and what a create leaves behind when it fails."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import NotFound, RackError
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
        assert (created.status, created.url) == ("running", "redis://:***@cache:6379/0")
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
        with pytest.raises(NotFound):
            await provider.resources.get("half")
        assert docker("volume", "ls", "-q", "--filter", f"name={RACK}-resource-half") == ""


async def test_a_failed_create_leaves_no_container_volume_or_record(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        await provider.params.set({"postgres_image": "rack-test/missing:1"})
        with pytest.raises(RackError) as failed:
            await provider.resources.create("postgres", "gone")
        assert failed.value.status == 502
        assert await provider.resources.list() == []
        assert server("gone") == ""
        assert docker("volume", "ls", "-q", "--filter", f"label=convox.rack={RACK}") == ""
        await provider.params.set({"postgres_image": ""})  # back to the default
        assert (await provider.params.get())["postgres_image"] == "postgres:16"


async def test_a_service_is_creating_until_its_server_accepts_connections(settings: RackSettings) -> None:
    async with LocalProvider(settings) as provider:
        creating = asyncio.create_task(provider.resources.create("mysql", "db"))
        seen: list[str] = []
        while not creating.done():
            with contextlib.suppress(NotFound):
                seen.append((await provider.resources.get("db")).status)
            await asyncio.sleep(0.05)
        assert (await creating).status == "running"
        # creating until the server accepts connections; running (if seen before create returned) only after
        assert seen and seen[0] == "creating" and set(seen) <= {"creating", "running"}
        assert "creating" not in seen[seen.index("running") :] if "running" in seen else True
        assert [(r.name, r.type, r.status) for r in await provider.resources.list()] == [("db", "mysql", "running")]
        assert (await provider.resources.get("db")).url == "mysql://app:***@db:3306/app"
        await provider.resources.delete("db")
        assert await provider.resources.list() == []
