"""``ResourcesAPI.export`` and ``import_`` over every provider, on redis (the quickest of the dumpable types).

- ``local``: a real redis server in a container on the real engine (the offline images of ``make images``);
  the test puts data in and reads it back with ``redis-cli`` in the service's own container;
- ``aws``: an ElastiCache replication group in moto. The rack makes no dumps on aws yet (that needs a task in
  the rack's network running the dump tools), so there both calls refuse with BadRequest saying what to use
  instead; that refusal is what the aws case checks. (Postgres's refusal: tests/aws/test_resources.py.)
The other types' dumps, through the CLI on a whole rack: tests/test_services_dumps.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterable, AsyncIterator

import pytest

from shared.errors import BadRequest, Conflict, NotFound
from shared.provider import Provider
from shared.provider.aws.resources import NO_DUMPS
from tests.contract.test_resources import PASSWORD, RACK, made, services
from tests.sources import chunks_of
from tests.test_services import service_container

__all__ = ["services"]  # the fixture


async def nothing() -> AsyncIterator[bytes]:
    raise AssertionError("the dump was read")
    yield b""  # pragma: no cover


async def exported(provider: Provider, name: str) -> bytes:
    return b"".join([chunk async for chunk in await provider.resources.export(name)])


def redis_cli(name: str, password: str, *command: str) -> str:
    done = subprocess.run(
        ["docker", "exec", "-e", f"REDISCLI_AUTH={password}", service_container(RACK, name), "redis-cli", *command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_export_and_import_of_an_unknown_service_are_not_found(services: Provider) -> None:
    with pytest.raises(NotFound):
        await services.resources.export("nosuch")
    with pytest.raises(NotFound):
        await services.resources.import_("nosuch", nothing())
    with pytest.raises(BadRequest, match="invalid service name"):
        await services.resources.export("../etc")


@pytest.mark.parametrize("provider_name", ["local"])
async def test_a_redis_services_data_round_trips_through_export_and_import(services: Provider) -> None:
    """Then the documented refusals: a dump the tool refuses (BadRequest, the data kept), an import while
    another runs (Conflict, before the dump is read), a server that is not running (Conflict)."""
    await made(services, "redis", "dumped")
    password = PASSWORD.search((await services.resources.get("dumped", reveal=True)).url)
    assert password is not None
    secret = password.group(1)

    def cli(*command: str) -> str:
        return redis_cli("dumped", secret, *command)

    await asyncio.to_thread(cli, "set", "greeting", "hello")
    await asyncio.to_thread(cli, "rpush", "queue", "a", "b")
    dump = await exported(services, "dumped")
    assert dump.startswith(b"REDIS")

    await asyncio.to_thread(cli, "flushall")
    await asyncio.to_thread(cli, "set", "stray", "gone after the import")
    reading, release = asyncio.Event(), asyncio.Event()

    async def held(data: bytes) -> AsyncIterable[bytes]:
        yield data[:10]
        reading.set()
        await release.wait()
        yield data[10:]

    first = asyncio.create_task(services.resources.import_("dumped", held(dump)))
    async with asyncio.timeout(30):
        await reading.wait()
    with pytest.raises(Conflict, match="under way"):
        await services.resources.import_("dumped", nothing())
    release.set()
    await first
    assert await asyncio.to_thread(cli, "get", "greeting") == "hello"
    assert (await asyncio.to_thread(cli, "lrange", "queue", "0", "-1")).split() == ["a", "b"]
    assert await asyncio.to_thread(cli, "exists", "stray") == "0"  # replaced, not merged

    with pytest.raises(BadRequest, match="not an RDB file"):
        await services.resources.import_("dumped", chunks_of(b"this is not a dump\n" * 100))
    assert await asyncio.to_thread(cli, "get", "greeting") == "hello"

    await asyncio.to_thread(
        subprocess.run, ["docker", "stop", service_container(RACK, "dumped")], capture_output=True, check=True
    )
    with pytest.raises(Conflict, match="not running"):
        await services.resources.export("dumped")
    with pytest.raises(Conflict, match="not running"):
        await services.resources.import_("dumped", nothing())


@pytest.mark.parametrize("provider_name", ["local"])
async def test_a_memcached_service_has_nothing_to_export_or_import(services: Provider) -> None:
    await made(services, "memcached", "cache")
    for attempt in (services.resources.export("cache"), services.resources.import_("cache", nothing())):
        with pytest.raises(BadRequest, match="memcached services keep no data to export or import"):
            await attempt


@pytest.mark.parametrize("provider_name", ["aws"])
async def test_on_aws_export_and_import_are_refused_saying_what_to_use_instead(services: Provider) -> None:
    await made(services, "redis", "dumped")
    for attempt in (services.resources.export("dumped"), services.resources.import_("dumped", nothing())):
        with pytest.raises(BadRequest) as refused:
            await attempt
        assert refused.value.message == NO_DUMPS
