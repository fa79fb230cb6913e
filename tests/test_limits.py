"""Caps on long-lived work: log follows, exec and run sessions, uploads and builds are refused with 429 and a
clear error past their configured cap (and served again once one ends); the gateway's pool to a service is
not exhausted by long-lived plain HTTP streams. The services run on a real uvicorn over the real local provider
(SQLite and files under a temporary data dir; nothing here needs the Docker Engine). The caps on exec and run
sessions, which reach a real process, are in tests/test_session_limits.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from websockets.exceptions import InvalidStatus

from services import builds, logs
from services.builds.settings import BuildsSettings
from services.gateway.proxy import Upstreams
from services.logs.settings import LogsSettings
from shared import stream
from shared.provider.local import LocalProvider
from tests.conftest import local_provider, local_settings, on_uvicorn


async def refused(url: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, subprotocols=[stream.SUBPROTOCOL]):  # type: ignore[list-item]
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]


async def test_log_follows_past_their_cap_are_refused_with_429_until_one_ends(tmp_path: Path) -> None:
    provider = local_provider(tmp_path)
    app = logs.create_app(local_settings(tmp_path), provider, internal=False, logs=LogsSettings(max_follows=2))
    async with on_uvicorn(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await provider.apps.create("myapp")
        await provider.logs.event("myapp", "one", release="R")  # the app's log: one line, followed for more
        async with asyncio.timeout(10):
            while b" one\n" not in (await client.get("/apps/myapp/logs")).content:  # noqa: ASYNC110  (collected)
                await asyncio.sleep(0.02)
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


async def test_uploads_and_builds_past_their_cap_are_refused_with_429(tmp_path: Path) -> None:
    provider = local_provider(tmp_path)
    assert isinstance(provider, LocalProvider)
    limits = BuildsSettings(max_builds=1, max_uploads=1)
    app = builds.create_app(local_settings(tmp_path), provider, internal=False, builds=limits)
    async with on_uvicorn(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await provider.apps.create("myapp")
        await provider.state.execute(  # one build running (a builds service's, as its row says)
            "INSERT INTO builds (id, app, status, description, manifest, created, runner)"
            " VALUES ('BRUNNINGNOW', 'myapp', 'running', '', '{}', '2026-01-01T00:00:00+00:00', '')"
        )
        assert await provider.builds.running() == 1
        response = await client.post("/apps/myapp/builds", content=b"not read")
        assert response.status_code == 429
        assert response.json()["error"].startswith("too many builds running at once (the limit is 1")
        await provider.state.execute("UPDATE builds SET status = 'failed' WHERE id = 'BRUNNINGNOW'")  # it ended
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
