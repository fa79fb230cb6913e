"""The logs service's websockets and GET routes over the real local provider (SQLite and files under a temporary
data dir, on a real uvicorn) where no app's process is read, so without the Docker Engine: refusals before the
handshake, the rack's own log, the OpenAPI document; and the processes service's ``GET /system/processes``.
An app's log over its real processes is in tests/test_logs_run_api.py."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import InvalidStatus

from services.logs import create_app
from shared import stream
from shared.provider import Provider
from tests.conftest import local_provider, local_settings, on_uvicorn

RACK_LINE = b"2015-01-01T00:00:00.000000Z gateway: ns=gateway at=request\n"
"""A line of the rack's own log (``DATA/logs/rack.log``), as the rack's services write it."""


def serve_logs(data_dir: Path, provider: Provider) -> FastAPI:
    return create_app(local_settings(data_dir), provider=provider, internal=False)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    """The logs service over a local provider with the app ``myapp`` and one line in the rack's own log."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rack.log").write_bytes(b"2015-01-01T00:00:00.000000Z apps: ns=apps at=start\n" + RACK_LINE)
    provider = local_provider(tmp_path)
    async with on_uvicorn(serve_logs(tmp_path, provider)) as port:
        await provider.apps.create("myapp")
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


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/apps/nope/logs", 404, "no such app: nope"),
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


async def test_the_racks_own_log_is_read_as_the_app_convox_and_the_system(served: str) -> None:
    for path in ("/apps/convox/logs?service=gateway", "/system/logs?service=gateway"):
        output, status = await read(served, f"{path}&follow=false")
        assert output == RACK_LINE  # the service's filter is applied
        assert status == stream.Status(exit_code=0)
        async with websockets.connect(f"ws://{served}{path}", subprotocols=[stream.SUBPROTOCOL]) as socket:  # type: ignore[list-item]
            received = b""
            while RACK_LINE not in received:  # followed (the default): the history first, then it goes on
                message = await socket.recv()
                assert isinstance(message, bytes)
                channel, payload = stream.decode(message)
                assert channel == stream.Channel.STDOUT
                received += payload
            assert received == RACK_LINE


async def test_plain_get_answers_the_racks_log_as_text_and_an_unknown_app_as_404(served: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served}") as client:
        missing = await client.get("/apps/nope/logs")
        assert (missing.status_code, missing.json()) == (404, {"error": "no such app: nope"})
        response = await client.get("/system/logs", params={"since": "100000d"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.endswith("gateway: ns=gateway at=request\n")


def test_openapi_documents_the_log_routes(tmp_path: Path) -> None:
    doc = serve_logs(tmp_path, local_provider(tmp_path)).openapi()
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
    settings = local_settings(tmp_path)
    app = build_service("processes", [router], settings=settings, provider=local_provider(tmp_path), internal=False)
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
