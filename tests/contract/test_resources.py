"""Backing services over every provider: the same calls, the same answers.

- ``local``: a real redis server in a container (the offline image of ``make images``) on the real engine;
- ``aws``: an ElastiCache replication group in moto, in a VPC made in moto as the rack stack would (a test
  double of the rack's network). Simulated: AWS itself; nothing listens at moto's endpoints, so on aws the
  status comes from the ElastiCache API and no test connects to the server.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest, Conflict, NotFound
from shared.models import Resource
from shared.provider import Provider, load_provider
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import use_rack_network
from tests.test_services import LOCAL_IMAGES, remove_services, require_images

RACK = RACK_NAME + "-rc"
"""Not the session rack's name: its service containers would share names with this suite's."""
PASSWORD = re.compile(r":([0-9a-f]{48})@")


@pytest.fixture
async def services(
    provider_name: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Provider]:
    if provider_name == "aws":
        await asyncio.to_thread(use_rack_network, monkeypatch)
    else:
        require_images()
    try:
        async with load_provider(RackSettings(provider=provider_name, data_dir=tmp_path, name=RACK)) as opened:
            if provider_name == "local":
                await opened.params.set(LOCAL_IMAGES)
            await opened.apps.create("web")
            yield opened
    finally:
        if provider_name == "local":
            await asyncio.to_thread(cleanup)


async def made(provider: Provider, kind: str, name: str, within: float = 120.0) -> Resource:
    """Create a service and wait until it is made (running) or not (failed): a create answers at once."""
    created = await provider.resources.create(kind, name)
    assert created.status == "creating"
    for _ in range(int(within / 0.1)):
        current = await provider.resources.get(name)
        if current.status != "creating":
            return current
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} is still creating after {within} s")


def cleanup() -> None:
    remove_services(RACK)
    subprocess.run(["docker", "network", "rm", f"convox-{RACK}"], capture_output=True, check=False)


def scheme(provider_name: str) -> str:
    return "rediss" if provider_name == "aws" else "redis"  # ElastiCache with transit encryption: TLS


async def test_a_service_runs_with_its_password_hidden_unless_revealed(services: Provider, provider_name: str) -> None:
    created = await made(services, "redis", "cache")
    assert (created.name, created.type, created.status, created.apps) == ("cache", "redis", "running", [])
    assert created.url.startswith(f"{scheme(provider_name)}://:***@") and created.url.endswith(":6379/0")
    hidden = await services.resources.get("cache")
    revealed = await services.resources.get("cache", reveal=True)
    assert hidden.url == created.url and "***" not in revealed.url
    password = PASSWORD.search(revealed.url)
    assert password is not None and revealed.url.replace(password.group(1), "***") == hidden.url
    assert [r.url for r in await services.resources.list()] == [hidden.url]
    assert [r.url for r in await services.resources.list(reveal=True)] == [revealed.url]
    host, port = await services.resources.address("cache")
    assert port == 6379 and host
    if provider_name == "aws":  # locally the URL names the network alias and the address is the container's
        assert f"@{host}:6379/" in revealed.url
    with pytest.raises(Conflict):
        await services.resources.create("redis", "cache")


async def test_delete_is_refused_while_linked_then_unlink_and_delete(services: Provider) -> None:
    await made(services, "redis", "cache")
    linked = await services.resources.link("cache", "web")
    assert linked.apps == ["web"]
    with pytest.raises(Conflict, match="already linked"):
        await services.resources.link("cache", "web")
    with pytest.raises(NotFound):
        await services.resources.link("cache", "nosuchapp")
    with pytest.raises(NotFound):
        await services.resources.link("nosuch", "web")
    with pytest.raises(Conflict, match="linked to web"):
        await services.resources.delete("cache")
    assert (await services.resources.get("cache")).status == "running"
    assert (await services.resources.unlink("cache", "web")).apps == []
    with pytest.raises(NotFound):
        await services.resources.unlink("cache", "web")
    await services.resources.delete("cache")
    with pytest.raises(NotFound):
        await services.resources.get("cache")
    with pytest.raises(NotFound):
        await services.resources.delete("cache")
    with pytest.raises(NotFound):
        await services.resources.address("cache")
    assert await services.resources.list() == []


async def test_a_manifests_resource_is_declared_linked_kept_and_undeclared(services: Provider) -> None:
    declared = await services.resources.declare("web", "cache", "redis")
    assert (declared.name, declared.type, declared.apps, declared.status) == ("web-cache", "redis", ["web"], "running")
    assert "***" not in declared.url
    assert await services.resources.declared("web") == {"cache": "web-cache"}
    again = await services.resources.declare("web", "cache", "redis")  # the next deploy: the same service
    assert again.url == declared.url
    with pytest.raises(Conflict, match="is redis"):
        await services.resources.declare("web", "cache", "memcached")
    with pytest.raises(BadRequest, match="too long"):
        await services.resources.declare("web", "a-resource-name-far-too-long-here", "redis")
    with pytest.raises(NotFound):
        await services.resources.declare("nosuchapp", "cache", "redis")
    await services.resources.undeclare("web", "cache")
    assert await services.resources.declared("web") == {}
    kept = await services.resources.get("web-cache")
    assert (kept.status, kept.apps) == ("running", [])  # unlinked; the service and its data stay
    with pytest.raises(NotFound):
        await services.resources.undeclare("web", "cache")
    await services.resources.delete("web-cache")


async def test_deleting_an_app_drops_its_links(services: Provider) -> None:
    await made(services, "redis", "cache")
    await services.resources.link("cache", "web")
    await services.resources.declare("web", "store", "redis")
    await services.apps.delete("web")
    assert [(r.name, r.apps) for r in await services.resources.list()] == [("cache", []), ("web-store", [])]
    await services.resources.delete("cache")
    await services.resources.delete("web-store")


@pytest.mark.parametrize("name", ["Bad", "-x", "a_b", "x" * 31, "../etc", ""])
async def test_bad_names_are_refused_and_make_nothing(services: Provider, name: str) -> None:
    with pytest.raises(BadRequest, match="invalid service name"):
        await services.resources.create("redis", name)
    with pytest.raises(BadRequest):
        await services.resources.get(name)
    assert await services.resources.list() == []


async def test_an_unknown_type_is_refused_and_makes_nothing(services: Provider) -> None:
    with pytest.raises(BadRequest, match="unknown service type: 'oracle'"):
        await services.resources.create("oracle", "db")
    with pytest.raises(BadRequest, match="unknown service type"):
        await services.resources.declare("web", "db", "oracle")
    assert await services.resources.list() == []
