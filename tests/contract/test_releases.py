"""Releases and the environment, over every provider: success and the documented errors."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import NotFound
from shared.provider import Provider


async def test_a_release_copies_what_is_not_given(provider: Provider) -> None:
    await provider.apps.create("rel")
    assert await provider.releases.environment("rel") == {}
    first = await provider.releases.create("rel", env={"A": "1", "SECRET": "s3cr3t"}, description="env set A")
    second = await provider.releases.create("rel", description="again")
    assert first.id != second.id and first.id.startswith("R") and len(first.id) == 11
    assert second.env == {"A": "1", "SECRET": "s3cr3t"}
    assert await provider.releases.environment("rel") == {"A": "1", "SECRET": "s3cr3t"}
    got = await provider.releases.get("rel", first.id)
    assert (got.id, got.env, got.description) == (first.id, first.env, "env set A")
    assert got.created is not None
    assert [r.id for r in await provider.releases.list("rel")] == [second.id, first.id]
    assert [r.id for r in await provider.releases.list("rel", limit=1)] == [second.id]


async def test_release_errors(provider: Provider) -> None:
    await provider.apps.create("relerr")
    with pytest.raises(NotFound):
        await provider.releases.get("relerr", "RNOSUCHONEX")
    with pytest.raises(NotFound):
        await provider.releases.create("missing", env={})
    with pytest.raises(NotFound):
        await provider.releases.environment("missing")
    with pytest.raises(NotFound):
        await provider.releases.list("missing")
    with pytest.raises(NotFound):
        await provider.releases.create("relerr", build="BNOSUCHONEX")
    assert await provider.releases.list("relerr") == []


async def test_a_release_is_only_found_through_its_own_app(provider: Provider) -> None:
    await provider.apps.create("one")
    await provider.apps.create("two")
    release = await provider.releases.create("one", env={"K": "v"})
    with pytest.raises(NotFound):
        await provider.releases.get("two", release.id)


async def test_concurrent_releases_are_all_kept(provider: Provider) -> None:
    await provider.apps.create("busy")
    made = await asyncio.gather(*(provider.releases.create("busy", env={"N": str(n)}) for n in range(8)))
    assert len({r.id for r in made}) == 8
    assert sorted(r.id for r in await provider.releases.list("busy")) == sorted(r.id for r in made)


async def test_deleting_an_app_deletes_its_releases(provider: Provider) -> None:
    await provider.apps.create("gone")
    await provider.releases.create("gone", env={"A": "1"})
    await provider.apps.delete("gone")
    await provider.apps.create("gone")
    assert await provider.releases.list("gone") == []
    assert await provider.releases.environment("gone") == {}


async def test_environment_changes_made_at_once_are_all_kept(provider: Provider) -> None:
    await provider.apps.create("envchange")
    await provider.releases.create("envchange", env={"KEEP": "1", "GONE": "x"})
    await asyncio.gather(*(provider.releases.change_env("envchange", set={f"K{n}": str(n)}) for n in range(5)))
    changed = await provider.releases.change_env("envchange", unset=["GONE"], description="env unset GONE")
    assert changed.env == {"KEEP": "1", **{f"K{n}": str(n) for n in range(5)}}
    assert changed.description == "env unset GONE"
    with pytest.raises(NotFound):
        await provider.releases.change_env("envchange", unset=["NEVER"])
    replaced = await provider.releases.change_env("envchange", set={"ONLY": "1"}, replace=True)
    assert replaced.env == {"ONLY": "1"}
    assert await provider.releases.environment("envchange") == {"ONLY": "1"}
    with pytest.raises(NotFound):
        await provider.releases.change_env("nope", set={"A": "1"})
