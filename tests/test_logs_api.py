"""The logs service's websockets and GET routes over a fake logs provider (on a real uvicorn), and the
processes service's ``GET /system/processes``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from services.logs import create_app
from shared import stream
from shared.config import RackSettings
from shared.errors import NotFound
from tests.conftest import on_uvicorn
from tests.fakes import FakeProvider, as_provider


class FakeLogs:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.live: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()

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
        self.calls.append(
            {"app": app, "since": since, "follow": follow, "service": service, "pid": pid, "filter": filter}
        )
        if app != "myapp" or pid not in ("", "68831d3dce63"):
            raise NotFound(f"no such {'process' if pid else 'app'}: {pid or app}")
        try:
            yield []
            yield [
                b"2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63 one\n",
                b"2015-01-01T00:00:00.000000Z convox:RNJYVQUMKKU release promoted\n",
            ]
            while follow:
                yield [await self.live.get()]
        finally:
            self.closed.set()

    async def system(
        self, *, since: datetime | None = None, follow: bool = True, service: str = "", filter: str = ""
    ) -> AsyncIterator[list[bytes]]:
        self.calls.append({"system": True, "service": service, "follow": follow})
        yield [b"2015-01-01T00:00:00.000000Z gateway: ns=gateway at=request\n"]


@pytest.fixture
def logs() -> FakeLogs:
    return FakeLogs()


@pytest.fixture
async def served(logs: FakeLogs, tmp_path: Path) -> AsyncIterator[str]:
    provider = FakeProvider()
    provider.logs = logs  # type: ignore[attr-defined]
    app = create_app(RackSettings(data_dir=tmp_path), provider=as_provider(provider), internal=False)
    async with on_uvicorn(app) as port:
        yield f"127.0.0.1:{port}"


async def read(address: str, path: str) -> tuple[bytes, stream.Status | None]:
    output = b""
    async with websockets.connect(f"ws://{address}{path}", subprotocols=[stream.SUBPROTOCOL]) as socket:  # type: ignore[list-item]
        assert socket.subprotocol == stream.SUBPROTOCOL
        async for message in socket:
            assert isinstance(message, bytes)
            channel, payload = stream.decode(message)
            if channel == stream.Channel.STDOUT:
                output += payload
            elif channel == stream.Channel.STATUS:
                return output, stream.parse_status(payload)
    return output, None


async def test_no_follow_prints_the_lines_then_a_status(served: str, logs: FakeLogs) -> None:
    output, status = await read(served, "/apps/myapp/logs?follow=false&since=2m&service=web&filter=on")
    assert output == (
        b"2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63 one\n"
        b"2015-01-01T00:00:00.000000Z convox:RNJYVQUMKKU release promoted\n"
    )
    assert status == stream.Status(exit_code=0)
    call = logs.calls[-1]
    assert (call["follow"], call["service"], call["filter"], call["pid"]) == (False, "web", "on", "")
    assert 100 < (datetime.now(UTC) - call["since"]).total_seconds() < 140


async def test_the_logs_service_runs_the_workers_and_answers_once_they_adopted(tmp_path: Path) -> None:
    provider = FakeProvider()
    app = create_app(RackSettings(data_dir=tmp_path), provider=as_provider(provider), internal=False)
    async with app.router.lifespan_context(app):
        # the workers (log collection among them) started once, before the service answers
        assert (provider.workers_started, provider.formation.adopted, provider.timers.adopted) == (1, 1, 1)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://logs") as client:
            assert (await client.get("/openapi.json")).status_code == 200
    assert provider.workers_started == 1


async def test_a_follow_stream_goes_on_and_ends_the_providers_stream_when_the_client_leaves(
    served: str, logs: FakeLogs
) -> None:
    async with websockets.connect(f"ws://{served}/apps/myapp/logs", subprotocols=[stream.SUBPROTOCOL]) as socket:  # type: ignore[list-item]
        first = await socket.recv()
        assert isinstance(first, bytes) and first.count(b"\n") == 2
        await logs.live.put(b"2015-01-01T00:00:00.000000Z web:R/68831d3dce63 live\n")
        assert await socket.recv() == b"\x01" + b"2015-01-01T00:00:00.000000Z web:R/68831d3dce63 live\n"
    await asyncio.wait_for(logs.closed.wait(), 5)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/apps/nope/logs", 404, "no such app: nope"),
        ("/apps/myapp/processes/0123456789ab/logs", 404, "no such process: 0123456789ab"),
        ("/apps/myapp/logs?since=yesterday", 400, "since: expected"),
        ("/apps/myapp/logs?follow=maybe", 400, "follow: expected true or false"),
    ],
)
async def test_a_bad_request_is_refused_before_the_handshake(served: str, path: str, status: int, error: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://{served}{path}"):
            pass
    assert refused.value.response.status_code == status
    assert error in json.loads(bytes(refused.value.response.body or b""))["error"]


async def test_one_process_and_the_rack_itself(served: str, logs: FakeLogs) -> None:
    output, status = await read(served, "/apps/myapp/processes/68831d3dce63/logs?follow=false")
    assert status == stream.Status(exit_code=0) and b" one\n" in output
    assert logs.calls[-1]["pid"] == "68831d3dce63"
    for path in ("/apps/convox/logs?service=gateway", "/system/logs?service=gateway"):
        output, status = await read(served, path)
        assert output == b"2015-01-01T00:00:00.000000Z gateway: ns=gateway at=request\n"
        assert status == stream.Status(exit_code=0)
        assert logs.calls[-1] == {"system": True, "service": "gateway", "follow": True}


async def test_plain_get_answers_the_history_as_text(served: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served}") as client:
        response = await client.get("/apps/myapp/logs", params={"since": "1h"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.splitlines()[1] == "2015-01-01T00:00:00.000000Z convox:RNJYVQUMKKU release promoted"
        missing = await client.get("/apps/nope/logs")
        assert (missing.status_code, missing.json()) == (404, {"error": "no such app: nope"})
        assert (await client.get("/system/logs")).text.endswith("gateway: ns=gateway at=request\n")


def test_openapi_documents_the_log_routes() -> None:
    doc = create_app(RackSettings(), provider=as_provider(FakeProvider()), internal=False).openapi()
    ids = {path: item["get"]["operationId"] for path, item in doc["paths"].items()}
    assert ids == {
        "/apps/{app}/logs": "app_logs",
        "/apps/{app}/processes/{pid}/logs": "process_logs",
        "/system/logs": "system_logs",
    }
    assert "101" in doc["paths"]["/apps/{app}/logs"]["get"]["responses"]


# ---- the rack's own processes ----------------------------------------------------------------------------


async def test_system_processes_lists_the_racks_processes_with_cpu_and_mem(tmp_path: Path) -> None:
    from services.processes.rack import router
    from shared.service import build_service

    (tmp_path / "run").mkdir()
    started = time.time() - 60
    entries = [
        {"name": "supervisor", "pid": os.getpid(), "started": started, "command": "convox rack start"},
        {"name": "gone", "pid": 2**22 + 7, "started": started, "command": "-m services.gone"},
    ]
    (tmp_path / "run" / "processes.json").write_text(json.dumps(entries))
    settings = RackSettings(data_dir=tmp_path)
    app = build_service("processes", [router], settings=settings, provider=as_provider(FakeProvider()), internal=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://processes") as client:
            response = await client.get("/system/processes")
    assert response.status_code == 200
    [me] = response.json()  # a pid that is gone is not listed
    assert (me["id"], me["app"], me["name"], me["command"]) == (
        str(os.getpid()),
        "convox",
        "supervisor",
        entries[0]["command"],
    )
    assert 0 <= me["cpu"] < 4 and 0 < me["memory"] < 1
    assert datetime.fromisoformat(me["started"].replace("Z", "+00:00")).timestamp() == pytest.approx(started, abs=1)
