"""The provider contract, run over every provider implementation against its real backend
(local: SQLite under a temporary data dir and the real Docker Engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest, Conflict, NotFound
from shared.models import ProcessRunOptions
from shared.provider import PROVIDERS, Provider, load_provider
from tests.conftest import RACK_NAME


def settings_for(name: str, data_dir: Path) -> RackSettings:
    return RackSettings(provider=name, data_dir=data_dir, name=RACK_NAME)


@pytest.fixture(params=sorted(PROVIDERS))
async def provider(request: pytest.FixtureRequest, tmp_path: Path, docker_engine: str) -> AsyncIterator[Provider]:
    async with load_provider(settings_for(request.param, tmp_path)) as opened:
        yield opened


async def test_app_lifecycle(provider: Provider) -> None:
    created = await provider.apps.create("myapp")
    assert (created.name, created.status, created.release) == ("myapp", "created", "")  # not running: no release
    assert [a.name for a in await provider.apps.list()] == ["myapp"]
    assert (await provider.apps.get("myapp")).name == "myapp"
    await provider.apps.delete("myapp")
    assert await provider.apps.list() == []


async def test_app_errors(provider: Provider) -> None:
    await provider.apps.create("twice")
    with pytest.raises(Conflict):
        await provider.apps.create("twice")
    with pytest.raises(NotFound):
        await provider.apps.get("missing")
    with pytest.raises(NotFound):
        await provider.apps.delete("missing")
    with pytest.raises(BadRequest):
        await provider.apps.create("Not_Valid")
    with pytest.raises(Conflict):
        await provider.apps.create("convox")
    assert [a.name for a in await provider.apps.list()] == ["twice"]


async def test_apps_survive_reopening_the_provider(tmp_path: Path, docker_engine: str) -> None:
    for name in sorted(PROVIDERS):
        settings = settings_for(name, tmp_path / name)
        async with load_provider(settings) as first:
            await first.apps.create("kept")
        async with load_provider(settings) as second:
            assert [a.name for a in await second.apps.list()] == ["kept"]


async def test_system_names_the_provider(provider: Provider) -> None:
    system = await provider.system.get()
    assert (system.name, system.provider, system.status) == (RACK_NAME, provider.name, "running")


async def test_a_process_runs_lists_and_stops(provider: Provider, busybox_image: str) -> None:
    await provider.apps.create("smoke")
    process = await provider.processes.run(
        "smoke", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "300"])
    )
    assert len(process.id) == 12
    assert (process.app, process.name) == ("smoke", "web")
    assert [p.id for p in await provider.processes.list("smoke")] == [process.id]
    assert (await provider.processes.get("smoke", process.id)).command == "sleep 300"
    await provider.processes.stop("smoke", process.id)
    assert await provider.processes.list("smoke") == []
    with pytest.raises(NotFound):
        await provider.processes.get("smoke", process.id)


async def test_a_process_is_only_found_through_its_own_app(provider: Provider, busybox_image: str) -> None:
    await provider.apps.create("mine")
    await provider.apps.create("theirs")
    process = await provider.processes.run(
        "theirs", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "300"])
    )
    try:
        with pytest.raises(NotFound):
            await provider.processes.get("mine", process.id)
        with pytest.raises(NotFound):
            await provider.processes.stop("mine", process.id)
    finally:
        await provider.apps.delete("theirs")
    with pytest.raises(NotFound):
        await provider.processes.get("theirs", process.id)


async def test_deleting_an_app_removes_its_processes(provider: Provider, busybox_image: str) -> None:
    await provider.apps.create("doomed")
    process = await provider.processes.run(
        "doomed", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "300"])
    )
    await provider.apps.delete("doomed")
    await provider.apps.create("doomed")
    with pytest.raises(NotFound):
        await provider.processes.get("doomed", process.id)


async def test_running_an_unknown_image_fails_cleanly(provider: Provider) -> None:
    await provider.apps.create("noimage")
    with pytest.raises(NotFound):
        await provider.processes.run("noimage", ProcessRunOptions(service="web", image="rack-test/absent:0"))
    assert await provider.processes.list("noimage") == []
