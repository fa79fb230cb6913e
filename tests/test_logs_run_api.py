"""The logs service's websockets and GET routes over an app's real log: the local provider (SQLite and files under
a temporary data dir) collecting a real process's output from the Docker Engine and the rack's events, on a
real uvicorn. The refusals and the rack's own log, which need no engine, are in tests/test_logs_api.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from shared import stream
from shared.logstore.timestamps import ts_from_datetime
from shared.models import ProcessRunOptions
from shared.provider.local import LocalProvider
from tests.conftest import local_provider, on_uvicorn
from tests.test_logs_api import read, serve_logs

RELEASE = "RNJYVQUMKKU"


@dataclass
class Served:
    address: str
    provider: LocalProvider
    pid: str

    @property
    def web_line(self) -> bytes:
        """The process's one line, as the log renders it (without its timestamp)."""
        return f" web:/{self.pid} one\n".encode()


@pytest.fixture
async def served(tmp_path: Path, busybox_image: str, api_engine: str) -> AsyncIterator[Served]:
    """The logs service with the app ``myapp`` whose log holds, in time order: a web line of three minutes
    ago, then a real ``web`` process's one line ``one`` with its start and exit, and a release event."""
    provider = local_provider(tmp_path)
    assert isinstance(provider, LocalProvider)
    async with on_uvicorn(serve_logs(tmp_path, provider)) as port:
        await provider.apps.create("myapp")
        before = ts_from_datetime(datetime.now(UTC) - timedelta(minutes=3))
        await provider.state.execute(  # an event row written then (the events' table is the log's source)
            "INSERT INTO events (app, time, service, release, pid, message) VALUES (?, ?, ?, ?, ?, ?)",
            ("myapp", before, "web", "", "", "one, from before"),
        )
        provider.bell.ring()  # as every writer of events does: the collector reads the table at once
        options = ProcessRunOptions(service="web", command=["echo", "one"], image=busybox_image)
        process = await provider.processes.run("myapp", options)
        await provider.logs.event("myapp", "release promoted", release=RELEASE)
        address = f"127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=f"http://{address}") as client, asyncio.timeout(30):
            while True:  # collected: the process's line, its exit and the release event
                text = (await client.get("/apps/myapp/logs", params={"since": "1h"})).text
                if "web exited" in text and "release promoted" in text and f"web:/{process.id} one" in text:
                    break
                await asyncio.sleep(0.05)
        yield Served(address, provider, process.id)


def lines(output: bytes) -> list[bytes]:
    """The lines without their timestamps, checked to be in time order; the order of the lines of one time
    and of a process's line and its start and exit events (the Engine's) is the provider's, sorted here."""
    stamps = [line[:27] for line in output.splitlines()]
    assert stamps == sorted(stamps), output
    return sorted(line[27:] for line in output.splitlines(keepends=True))


async def test_no_follow_prints_the_lines_then_a_status(served: Served) -> None:
    output, status = await read(served.address, "/apps/myapp/logs?follow=false&since=2m&service=web&filter=on")
    assert lines(output) == [served.web_line]  # web only, matching "on", and not the one of 3 minutes ago
    assert status == stream.Status(exit_code=0)
    output, _ = await read(served.address, "/apps/myapp/logs?follow=false&since=5m&service=web&filter=on")
    assert lines(output) == [b" web: one, from before\n", served.web_line]
    output, _ = await read(served.address, "/apps/myapp/logs?follow=false&since=2m")
    assert lines(output) == sorted(
        [
            served.web_line,
            f" convox:/{served.pid} web started\n".encode(),
            f" convox:{RELEASE} release promoted\n".encode(),
            f" convox:/{served.pid} web exited (exit code 0)\n".encode(),
        ]
    )


async def test_a_follow_stream_goes_on_and_ends_the_providers_stream_when_the_client_leaves(served: Served) -> None:
    applog = await served.provider.logs.applog("myapp")
    url = f"ws://{served.address}/apps/myapp/logs"
    async with websockets.connect(url, subprotocols=[stream.SUBPROTOCOL]) as socket:  # type: ignore[list-item]
        first = await socket.recv()
        assert isinstance(first, bytes) and first.startswith(b"\x01")
        assert len(lines(first[1:])) == 5  # the history first, the line of 3 minutes ago included
        assert len(applog.subscribers) == 1
        await served.provider.logs.event("myapp", "live", release="R")
        live = await socket.recv()
        assert isinstance(live, bytes) and live.startswith(b"\x01") and live.endswith(b" convox:R live\n")
    async with asyncio.timeout(5):
        while applog.subscribers:  # noqa: ASYNC110  (the provider's stream ends with the client: no event says so)
            await asyncio.sleep(0.01)


async def test_an_unknown_process_is_refused_before_the_handshake(served: Served) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://{served.address}/apps/myapp/processes/0123456789ab/logs"):
            pass
    assert refused.value.response.status_code == 404
    assert json.loads(bytes(refused.value.response.body or b""))["error"] == "no such process: 0123456789ab"


async def test_one_process(served: Served) -> None:
    output, status = await read(served.address, f"/apps/myapp/processes/{served.pid}/logs?follow=false")
    assert status == stream.Status(exit_code=0)
    assert lines(output) == sorted(
        [
            served.web_line,
            f" convox:/{served.pid} web started\n".encode(),
            f" convox:/{served.pid} web exited (exit code 0)\n".encode(),
        ]
    )


async def test_plain_get_answers_the_history_as_text(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served.address}") as client:
        response = await client.get("/apps/myapp/logs", params={"since": "1h"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert f" convox:{RELEASE} release promoted\n".encode() in lines(response.content)
        assert len(lines(response.content)) == 5


async def test_the_logs_service_runs_the_workers_and_answers_once_they_adopted(
    tmp_path: Path, api_engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = local_provider(tmp_path)
    assert isinstance(provider, LocalProvider)
    real_workers = provider.workers
    seen: list[str] = []

    async def workers(started: Callable[[], None] | None = None) -> None:  # the real ones, watched
        seen.append("workers")

        def adopted() -> None:
            seen.append("adopted")
            if started is not None:
                started()

        await real_workers(adopted)

    monkeypatch.setattr(provider, "workers", workers)
    app = serve_logs(tmp_path, provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://logs") as client:
            seen.append(f"answered {(await client.get('/openapi.json')).status_code}")
        assert provider.promotions.owner  # the owner's loops (log collection, roll-outs) run here
    assert seen == ["workers", "adopted", "answered 200"]
    assert not provider.promotions.owner  # and stopped with the service
