"""The rack's network on the real Docker Engine: made once, however many processes ask for it at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator

import pytest

from shared.provider.local.docker import Docker, _created
from tests.conftest import RUN_ID


def networks_named(name: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "network", "ls", "--filter", f"name={name}", "--format", "{{json .}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [n["ID"] for n in map(json.loads, listed.splitlines()) if n["Name"] == name]


@pytest.fixture
def name() -> Iterator[str]:
    name = f"test-{RUN_ID}-net"
    yield name
    for network in networks_named(name):
        subprocess.run(["docker", "network", "rm", network], check=False, capture_output=True)


async def test_processes_that_ask_for_the_network_at_once_make_one(name: str) -> None:
    clients = [Docker(None) for _ in range(4)]  # one client per process of the rack
    try:
        labels = {"convox.rack": f"test-{RUN_ID}"}
        await asyncio.gather(*(c.ensure_network(name, labels) for c in clients for _ in range(2)))
        assert len(await asyncio.to_thread(networks_named, name)) == 1
        await clients[0].ensure_network(name, labels)  # found: nothing more is made
        assert len(await asyncio.to_thread(networks_named, name)) == 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_second_network_of_the_name_is_removed_and_the_oldest_kept(name: str) -> None:
    docker = Docker(None)
    try:
        first = await docker.client.networks.create({"Name": name, "CheckDuplicate": False})
        await docker.client.networks.create({"Name": name, "CheckDuplicate": False})  # as a racer did
        assert len(await asyncio.to_thread(networks_named, name)) == 2
        await docker.ensure_network(name, {})
    finally:
        await docker.close()
    assert await asyncio.to_thread(networks_named, name) == [first.id[:12]]


def test_creation_times_order_to_the_nanosecond() -> None:
    times = ["2026-12-02T16:20:01.1234567Z", "2026-12-02T16:20:01.12345678Z", "2026-12-02T16:20:01Z"]
    ordered = sorted(({"Created": t, "Id": t} for t in times), key=_created)
    assert [n["Created"] for n in ordered] == [times[2], times[0], times[1]]
