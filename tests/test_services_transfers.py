"""The export and import websockets of the provisioner, in process on a real uvicorn, over the real local
provider (its services real, on the Docker Engine) with a double of their dump tool (tests/transfers_double.py):
the dump goes out on the stdout channel and ends with a status (an error when the tool failed), comes in on
stdin until its close, and what goes wrong is said (an unknown service refuses the handshake; a dump over the
cap, or a client that goes away, never completes an import)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.provisioner import create_app
from services.provisioner.settings import ProvisionerSettings
from shared import stream
from shared.stream import Channel
from tests.conftest import local_provider, local_settings, on_uvicorn
from tests.test_services_run_api import LOCAL_IMAGES
from tests.transfers_double import DumpTransfers


@pytest.fixture
async def served(
    tmp_path: Path, api_engine: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, DumpTransfers]]:
    """The provisioner over the real local provider with the services ``db`` (postgres) and ``db2`` (redis),
    their dump tool the double's."""
    provider = local_provider(tmp_path)
    transfers = DumpTransfers(provider)
    transfers.install(monkeypatch)
    app = create_app(
        local_settings(tmp_path),
        provider=provider,
        internal=False,
        provisioner=ProvisionerSettings(max_import_size=150_000, max_transfers=2),
    )
    async with on_uvicorn(app) as port:
        await provider.params.set(LOCAL_IMAGES)
        await provider.resources.create("postgres", "db")
        await provider.resources.create("redis", "db2")
        yield f"ws://127.0.0.1:{port}", transfers


def connect(base: str, path: str) -> websockets.connect:
    return websockets.connect(base + path, subprotocols=[stream.SUBPROTOCOL], max_size=None)  # type: ignore[list-item]


async def messages(socket: websockets.ClientConnection) -> list[tuple[Channel, bytes]]:
    got = []
    try:
        async for message in socket:
            assert isinstance(message, bytes)
            got.append(stream.decode(message))
    except ConnectionClosed:
        pass
    return got


async def test_an_export_streams_the_dump_then_its_status(served: tuple[str, DumpTransfers]) -> None:
    base, resources = served
    async with connect(base, "/services/db/export") as socket:
        got = await messages(socket)
    assert b"".join(p for c, p in got if c == Channel.STDOUT) == b"".join(resources.dump)
    assert got[-1] == (Channel.STATUS, b'{"exit_code": 0}')

    resources.fail = "pg_dump exited with code 1: pg_dump: error: out of memory"
    async with connect(base, "/services/db/export") as socket:
        got = await messages(socket)
    assert got[-1][0] == Channel.STATUS
    assert json.loads(got[-1][1]) == {"error": resources.fail}


async def test_an_unknown_service_refuses_the_handshake(served: tuple[str, DumpTransfers]) -> None:
    base, _ = served
    for verb in ("export", "import"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base, f"/services/no-such/{verb}"):
                pass
        assert refused.value.response.status_code == 404
        assert json.loads(bytes(refused.value.response.body or b"")) == {"error": "no such service: no-such"}


async def test_an_import_reads_the_dump_until_stdin_closes(served: tuple[str, DumpTransfers]) -> None:
    base, resources = served
    async with connect(base, "/services/db/import") as socket:
        for part in (b"one ", b"two ", b"three"):
            await socket.send(stream.encode(Channel.STDIN, part))
        await socket.send(stream.close(Channel.STDIN))
        got = await messages(socket)
    assert got == [(Channel.STATUS, b'{"exit_code": 0}')]
    assert (bytes(resources.loaded), resources.ended) == (b"one two three", "loaded")


async def test_a_dump_over_the_cap_fails_the_import(served: tuple[str, DumpTransfers]) -> None:
    base, resources = served
    async with connect(base, "/services/db/import") as socket:
        with pytest.raises(ConnectionClosed):  # the rack stops listening once the cap is passed
            for _ in range(100):
                await socket.send(stream.encode(Channel.STDIN, b"y" * 10_000))
                await asyncio.sleep(0)
        got = await messages(socket)
    error = json.loads(got[-1][1])["error"]
    assert error.startswith("the dump is larger than 146.5 KiB") and "RACK_PROVISIONER_MAX_IMPORT_SIZE" in error
    assert resources.ended == "PayloadTooLarge"


async def test_a_client_gone_mid_import_does_not_complete_it(served: tuple[str, DumpTransfers]) -> None:
    base, resources = served
    async with connect(base, "/services/db/import") as socket:
        await socket.send(stream.encode(Channel.STDIN, b"half a dump"))
        for _ in range(500):
            if resources.loaded:
                break
            await asyncio.sleep(0.01)
    for _ in range(500):
        if resources.ended:
            break
        await asyncio.sleep(0.01)
    assert resources.ended == "ClientGone"


async def test_a_second_import_at_once_and_past_the_cap_on_transfers_are_refused(
    served: tuple[str, DumpTransfers],
) -> None:
    base, resources = served
    resources.hold.clear()

    async def loaded(size: int) -> None:
        for _ in range(500):
            if len(resources.loaded) >= size:
                return
            await asyncio.sleep(0.01)

    async with connect(base, "/services/db/import") as first:
        await first.send(stream.encode(Channel.STDIN, b"slow"))
        await loaded(4)
        with pytest.raises(InvalidStatus) as busy:
            async with connect(base, "/services/db/import"):
                pass
        assert busy.value.response.status_code == 409
        async with connect(base, "/services/db2/import") as second:
            await second.send(stream.encode(Channel.STDIN, b"also"))
            await loaded(8)
            with pytest.raises(InvalidStatus) as full:  # two transfers at once at most
                async with connect(base, "/services/db/export"):
                    pass
            assert full.value.response.status_code == 429
            assert b"RACK_PROVISIONER_MAX_TRANSFERS" in bytes(full.value.response.body or b"")
            resources.hold.set()
            for socket in (first, second):
                await socket.send(stream.close(Channel.STDIN))
                assert await messages(socket) == [(Channel.STATUS, b'{"exit_code": 0}')]
