"""Stored objects over every provider: store, fetch, exists, delete; keys checked, caps, whole replaces, an
app's objects its own.

- ``local``: files under a temporary data dir;
- ``aws``: S3 in moto (the settings bucket), multipart above 8 MiB;
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.errors import BadRequest, NotFound, PayloadTooLarge
from shared.provider import Provider, load_provider
from shared.provider.contract import ObjectsAPI
from tests.contract.conftest import settings_for
from tests.sources import chunks_of

KEY = "sources/abc123.tgz"
BAD_KEYS = [
    "",
    ".",
    "..",
    "../escape",
    "a/../../escape",
    "/absolute",
    ".hidden",
    "a/.hidden",
    "a//b",
    "a/",
    "back\\slash",
    "nul\x00",
    "new\nline",
    "with space",
    "x" * 256,
    "/".join(["a"] * 17),
]


@pytest.fixture
async def subject(provider_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    """The provider under test, with the apps ``web`` and ``api`` (on its backend, as tests/contract's
    ``provider`` fixture brings it up)."""
    async with contextlib.AsyncExitStack() as stack:
        request.getfixturevalue("backend")
        opened = await stack.enter_async_context(load_provider(settings_for(provider_name, tmp_path)))
        await opened.apps.create("web")
        await opened.apps.create("api")
        yield opened


async def content(objects: ObjectsAPI, app: str, key: str) -> bytes:
    return b"".join([chunk async for chunk in await objects.fetch(app, key)])


async def failing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionResetError("the client went away")


async def test_a_stored_object_is_fetched_whole_and_exists_until_deleted(subject: Provider) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    stored = await subject.objects.store("web", KEY, chunks_of(data, 100_000))
    assert (stored.app, stored.key, stored.size) == ("web", KEY, len(data))
    assert stored.url.endswith(f"web/{KEY}") or stored.url.endswith(f"apps/web/objects/{KEY}")
    assert await subject.objects.exists("web", KEY)
    assert await content(subject.objects, "web", KEY) == data
    await subject.objects.delete("web", KEY)
    assert not await subject.objects.exists("web", KEY)
    with pytest.raises(NotFound, match="no such object"):
        await subject.objects.fetch("web", KEY)


async def test_an_empty_object_is_an_object(subject: Provider) -> None:
    stored = await subject.objects.store("web", "empty", chunks_of(b""))
    assert stored.size == 0 and await subject.objects.exists("web", "empty")
    assert await content(subject.objects, "web", "empty") == b""


async def test_a_store_replaces_the_object_whole(subject: Provider) -> None:
    await subject.objects.store("web", KEY, chunks_of(b"old " * 1000))
    await subject.objects.store("web", KEY, chunks_of(b"new"))
    assert await content(subject.objects, "web", KEY) == b"new"


async def test_a_key_and_a_key_under_it_are_two_objects(subject: Provider) -> None:
    await subject.objects.store("web", "a", chunks_of(b"one"))
    await subject.objects.store("web", "a/b", chunks_of(b"two"))
    assert (await content(subject.objects, "web", "a"), await content(subject.objects, "web", "a/b")) == (
        b"one",
        b"two",
    )
    await subject.objects.delete("web", "a")
    assert await content(subject.objects, "web", "a/b") == b"two"


async def test_an_object_past_its_cap_is_refused_and_the_one_there_stays(subject: Provider) -> None:
    await subject.objects.store("web", KEY, chunks_of(b"kept"))
    with pytest.raises(PayloadTooLarge, match="larger than"):
        await subject.objects.store("web", KEY, chunks_of(b"x" * 1001, 100), max_size=1000)
    assert await content(subject.objects, "web", KEY) == b"kept"
    with pytest.raises(PayloadTooLarge):
        await subject.objects.store("web", "other", chunks_of(b"x" * 1001, 100), max_size=1000)
    assert not await subject.objects.exists("web", "other")
    exactly = await subject.objects.store("web", "other", chunks_of(b"x" * 1000, 100), max_size=1000)
    assert exactly.size == 1000


async def test_a_store_whose_data_fails_stores_nothing(subject: Provider) -> None:
    await subject.objects.store("web", KEY, chunks_of(b"kept"))
    with pytest.raises(ConnectionResetError):
        await subject.objects.store("web", KEY, failing(b"partial"))
    with pytest.raises(ConnectionResetError):
        await subject.objects.store("web", "fresh", failing(b"partial"))
    assert await content(subject.objects, "web", KEY) == b"kept"
    assert not await subject.objects.exists("web", "fresh")


async def test_missing_objects_and_apps_are_not_found(subject: Provider) -> None:
    with pytest.raises(NotFound, match="no such object"):
        await subject.objects.fetch("web", KEY)
    with pytest.raises(NotFound, match="no such object"):
        await subject.objects.delete("web", KEY)
    assert not await subject.objects.exists("web", KEY)
    with pytest.raises(NotFound, match="no such app"):
        await subject.objects.store("nope", KEY, chunks_of(b"data"))
    with pytest.raises(NotFound, match="no such app"):
        await subject.objects.fetch("nope", KEY)
    with pytest.raises(NotFound, match="no such app"):
        await subject.objects.exists("nope", KEY)
    with pytest.raises(NotFound, match="no such app"):
        await subject.objects.delete("nope", KEY)


async def test_bad_keys_and_app_names_are_refused_before_anything(subject: Provider) -> None:
    for key in BAD_KEYS:
        with pytest.raises(BadRequest, match="invalid object key"):
            await subject.objects.store("nope", key, chunks_of(b"data"))
        with pytest.raises(BadRequest, match="invalid object key"):
            await subject.objects.fetch("web", key)
        with pytest.raises(BadRequest, match="invalid object key"):
            await subject.objects.exists("web", key)
        with pytest.raises(BadRequest, match="invalid object key"):
            await subject.objects.delete("web", key)
    for app in ("../web", "Web", ".partial", "a/b"):
        with pytest.raises(BadRequest, match="invalid app name"):
            await subject.objects.store(app, KEY, chunks_of(b"data"))


async def test_an_apps_objects_are_its_own_and_go_with_it(subject: Provider) -> None:
    await subject.objects.store("web", KEY, chunks_of(b"web's"))
    await subject.objects.store("api", KEY, chunks_of(b"api's"))
    await subject.objects.delete("api", KEY)
    assert await content(subject.objects, "web", KEY) == b"web's"
    await subject.apps.delete("web")
    await subject.apps.create("web")
    assert not await subject.objects.exists("web", KEY)


async def test_local_objects_are_files_that_stay_under_their_root(tmp_path: Path) -> None:
    async with load_provider(settings_for("local", tmp_path)) as local:  # its objects need no engine
        await local.apps.create("web")
        await local.apps.create("api")
        await local_objects_stay_under_their_root(local.objects, tmp_path)


async def local_objects_stay_under_their_root(objects: ObjectsAPI, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    await objects.store("web", KEY, chunks_of(b"data"))
    root = tmp_path / "objects"
    assert sorted(p.name for p in (root / "web").iterdir()) == ["sources%abc123.tgz"]
    assert list((root / ".partial").iterdir()) == []  # received there, then renamed into place
    (root / "api").symlink_to(outside)  # a link planted where the app's directory goes
    with pytest.raises(BadRequest, match="invalid app name"):
        await objects.store("api", KEY, chunks_of(b"data"))
    with pytest.raises(BadRequest, match="invalid app name"):
        await objects.fetch("api", KEY)
    assert list(outside.iterdir()) == []
    (root / "web" / "link%x").symlink_to(outside / "x")  # and one where an object goes
    with pytest.raises(BadRequest, match="invalid object key"):
        await objects.store("web", "link/x", chunks_of(b"data"))
    assert list(outside.iterdir()) == []
