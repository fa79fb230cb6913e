"""Caps on long-lived work: log follows, exec and run sessions, uploads and builds are refused with 429 and a
clear error past their configured cap (and served again once one ends); the gateway's pool to a service is
not exhausted by long-lived plain HTTP streams. The services run on a real uvicorn over fake providers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from websockets.exceptions import InvalidStatus

from services import builds, logs, processes
from services.builds.settings import BuildsSettings
from services.gateway.proxy import Upstreams
from services.logs.settings import LogsSettings
from services.processes.settings import ProcessesSettings
from shared import stream
from shared.config import RackSettings
from shared.errors import NotFound
from shared.limits import Slots
from tests.conftest import on_uvicorn
from tests.fakes import FakeProvider, as_provider


class EndlessLogs:
    """A test double of the logs provider: every stream yields one batch, then (followed) waits forever."""

    async def app(
        self,
        app: str,
        *,
        since: datetime | None = None,
        follow: bool = True,
        service: str = "",
        pid: str = "",
        filter: str = "",
    ) -> AsyncIterator[list[bytes]]:
        yield [b"2015-01-01T00:00:00.000000Z web:R/68831d3dce63 one\n"]
        if follow:
            await asyncio.Event().wait()  # never set: followed until the client leaves


class IdleProcesses:
    """A test double of the processes provider: nothing to adopt, no process to exec into."""

    async def adopt(self) -> None:
        return None

    async def exec(self, app: str, pid: str, command: list[str]) -> None:
        raise NotFound(f"no such process: {pid}")


class CountedBuilds:
    """A test double of the builds provider: ``count`` builds run (rack-wide)."""

    def __init__(self, count: int) -> None:
        self.count = count

    async def running(self) -> int:
        return self.count

    def link_resources(self, hook: object) -> None:
        pass


async def refused(url: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, subprotocols=[stream.SUBPROTOCOL]):  # type: ignore[list-item]
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]


async def test_log_follows_past_their_cap_are_refused_with_429_until_one_ends(tmp_path: Path) -> None:
    provider = FakeProvider()
    provider.logs = EndlessLogs()  # type: ignore[attr-defined]
    settings = RackSettings(data_dir=tmp_path)
    app = logs.create_app(settings, as_provider(provider), internal=False, logs=LogsSettings(max_follows=2))
    async with on_uvicorn(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        url = f"ws://127.0.0.1:{port}/apps/myapp/logs"
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(websockets.connect(url, subprotocols=[stream.SUBPROTOCOL]))  # type: ignore[list-item]
            await first.recv()
            async with client.stream("GET", "/apps/myapp/logs", params={"follow": "true"}) as plain:
                assert plain.status_code == 200
                status, error = await refused(url)
                assert status == 429
                assert error.startswith("too many log follows at once (the limit is 2, setting RACK_LOGS_MAX_FOLLOWS)")
                again = await client.get("/apps/myapp/logs", params={"follow": "true"})
                assert (again.status_code, again.json()["error"][:21]) == (429, "too many log follows ")
                history = await client.get("/apps/myapp/logs")  # not followed: not capped
                assert history.status_code == 200 and b" one\n" in history.content
            async with websockets.connect(url, subprotocols=[stream.SUBPROTOCOL]) as third:  # type: ignore[list-item]
                assert b" one\n" in await third.recv()  # the plain follow ended: its slot is free


async def test_exec_and_run_sessions_past_their_cap_are_refused_with_429(tmp_path: Path) -> None:
    provider = FakeProvider()
    await provider.apps.create("myapp")
    provider.processes = IdleProcesses()  # type: ignore[assignment]
    app = processes.create_app(
        RackSettings(data_dir=tmp_path),
        as_provider(provider),
        internal=False,
        processes=ProcessesSettings(max_sessions=1),
    )
    sessions = app.state.sessions
    assert isinstance(sessions, Slots)
    async with on_uvicorn(app) as port:
        base = f"ws://127.0.0.1:{port}/apps/myapp"
        sessions.take()  # simulated: one session is open
        for path in ("/processes/0123456789ab/exec?command=sh", "/services/web/processes?command=sh"):
            status, error = await refused(base + path)
            assert (status, error[:39]) == (429, "too many exec and run sessions at once ")
        sessions.give()
        status, _ = await refused(base + "/processes/0123456789ab/exec?command=sh")
        assert status == 404  # past the cap: the fake has no such process
        assert sessions.used == 0


async def test_uploads_and_builds_past_their_cap_are_refused_with_429(tmp_path: Path) -> None:
    provider = FakeProvider()
    await provider.apps.create("myapp")
    provider.builds = CountedBuilds(1)  # type: ignore[attr-defined]
    limits = BuildsSettings(max_builds=1, max_uploads=1)
    app = builds.create_app(RackSettings(data_dir=tmp_path), as_provider(provider), internal=False, builds=limits)
    async with on_uvicorn(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        response = await client.post("/apps/myapp/builds", content=b"not read")
        assert response.status_code == 429
        assert response.json()["error"].startswith("too many builds running at once (the limit is 1")
        provider.builds.count = 0  # type: ignore[attr-defined]
        uploads = app.state.uploads
        uploads.take()  # simulated: one upload is being received
        response = await client.post("/apps/myapp/builds", content=b"not read")
        assert response.status_code == 429
        assert response.json()["error"].startswith("too many source uploads at once (the limit is 1")
        uploads.give()
        response = await client.post("/apps/myapp/builds", content=b"")
        assert (response.status_code, response.json()["error"]) == (400, "the source archive is empty")
        assert uploads.used == 0


def endless_service() -> FastAPI:
    """A service with a route that streams forever (as a followed log does) and a quick one."""
    app = FastAPI()

    @app.get("/follow")
    async def follow() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"line\n"
            await asyncio.Event().wait()  # never set: open until the client leaves

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/quick")
    async def quick() -> dict[str, str]:
        return {"ok": "yes"}

    return app


async def test_long_lived_streams_do_not_exhaust_the_gateways_pool_to_a_service(tmp_path: Path) -> None:
    socket = tmp_path / "logs.sock"
    server = uvicorn.Server(uvicorn.Config(endless_service(), uds=str(socket), log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    upstreams = Upstreams({"logs": socket}, "secret")
    client = upstreams.clients["logs"]
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(120):  # more than httpx's default pool of 100
                response = await stack.enter_async_context(client.stream("GET", "/follow"))
                assert response.status_code == 200
            quick = await asyncio.wait_for(client.get("/quick"), 5)
            assert quick.json() == {"ok": "yes"}
    finally:
        await upstreams.close()
        server.should_exit = True
        await task
