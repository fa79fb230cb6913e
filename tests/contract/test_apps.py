"""Apps and the system, over every provider (moved from tests/test_provider_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import BadRequest, Conflict, NotFound
from shared.provider import Provider, load_provider
from tests.conftest import RACK_NAME
from tests.contract.conftest import settings_for


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
    with pytest.raises(BadRequest):
        await provider.apps.get("../etc")
    with pytest.raises(Conflict):
        await provider.apps.create("convox")
    assert [a.name for a in await provider.apps.list()] == ["twice"]


async def test_apps_are_listed_by_name(provider: Provider) -> None:
    for name in ("zeta", "alpha", "mid"):
        await provider.apps.create(name)
    assert [a.name for a in await provider.apps.list()] == ["alpha", "mid", "zeta"]


async def test_apps_survive_reopening_the_provider(provider_name: str, backend: str, tmp_path: Path) -> None:
    settings = settings_for(provider_name, tmp_path)
    async with load_provider(settings) as first:
        await first.apps.create("kept")
    async with load_provider(settings) as second:
        assert [a.name for a in await second.apps.list()] == ["kept"]


async def test_system_names_the_provider(provider: Provider) -> None:
    system = await provider.system.get()
    assert (system.name, system.provider, system.status) == (RACK_NAME, provider.name, "running")


async def test_system_images_tells_an_image_the_engine_has_from_one_no_registry_has(
    provider: Provider, busybox_image: str
) -> None:
    missing = f"rack-test/missing-{RACK_NAME}:1"
    had, unheard = await provider.system.images([busybox_image, missing])
    if provider.name == "aws":  # builds run in an ECS task: the rack cannot tell
        assert (had.present, had.pullable, unheard.present, unheard.pullable) == (None, None, None, None)
        return
    assert (had.image, had.present, had.pullable) == (busybox_image, True, None)
    assert (unheard.image, unheard.present, unheard.pullable) == (missing, False, False)
    assert await provider.system.images([missing]) == [unheard]  # remembered, and asked again the same
