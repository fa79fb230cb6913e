"""The builds service's HTTP and websocket API over builds that run: the real local provider (SQLite and files
under a temporary data dir) building on the real Docker Engine. A build is made from the extracted upload and
its manifest, listed newest first within its app, and its log is the same text over HTTP as on the socket,
which ends with the build's status. The refusals, where no build runs, are in tests/test_builds_api.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from shared import stream
from shared.models import Build
from shared.provider import Provider
from tests.conftest import local_provider, on_uvicorn
from tests.test_builds_api import DOCKERFILE, leftovers, objects_left, service, source, tgz

LISTING = b"RUN cd /app && find . -mindepth 1 | sort | sed 's/^/listed /'\n"
"""A build step that prints what the build received, one ``listed ./PATH`` line each."""

FAILING = b"FROM rack-test/busybox:1\nRUN false\n"


@pytest.fixture
def provider(tmp_path: Path, busybox_image: str, api_engine: str) -> Provider:
    return local_provider(tmp_path)


@pytest.fixture
async def api(tmp_path: Path, provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    app = service(tmp_path, provider)
    async with app.router.lifespan_context(app):
        for name in ("myapp", "other"):
            await provider.apps.create(name)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://builds") as client:
            yield client


async def ended(provider: Provider, app: str, build: str) -> Build:
    """The build's record once it has ended (its log followed to the end)."""
    async for _ in provider.builds.logs(app, build, follow=True):
        pass
    return await provider.builds.get(app, build)


async def test_upload_makes_a_build_from_the_extracted_source(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path
) -> None:
    response = await api.post(
        "/apps/myapp/builds",
        params={"description": "first", "no_cache": "true"},
        content=source(**{"sub/x.txt": b"x", "Dockerfile": DOCKERFILE + LISTING}),
        headers={"content-type": "application/gzip"},
    )
    assert response.status_code == 201, response.text
    build = response.json()
    assert build["id"].startswith("B") and len(build["id"]) == 11
    assert (build["app"], build["description"], build["status"]) == ("myapp", "first", "created")
    assert json.loads(build["manifest"])["services"]["web"]["port"] == 3000
    done = await ended(provider, "myapp", build["id"])
    assert (done.status, done.error) == ("complete", ""), done.error
    assert done.release.startswith("R")
    log = (await api.get(f"/apps/myapp/builds/{build['id']}/logs")).text
    listed = [line.removeprefix("listed ./") for line in log.splitlines() if line.startswith("listed ./")]
    assert listed == ["Dockerfile", "convox.yml", "index.html", "sub", "sub/x.txt"]
    assert leftovers(tmp_path) == []
    assert objects_left(tmp_path) == []  # no source object left either
    assert (await api.get(f"/apps/myapp/builds/{build['id']}")).json() == done.model_dump(mode="json")
    assert [b["id"] for b in (await api.get("/apps/myapp/builds")).json()] == [build["id"]]


async def test_builds_are_listed_newest_first_and_found_only_through_their_app(
    api: httpx.AsyncClient, provider: Provider
) -> None:
    ids = [(await api.post("/apps/myapp/builds", content=source())).json()["id"] for _ in range(3)]
    assert [b["id"] for b in (await api.get("/apps/myapp/builds")).json()] == ids[::-1]
    assert [b["id"] for b in (await api.get("/apps/myapp/builds", params={"limit": 2})).json()] == ids[:0:-1]
    assert (await api.get("/apps/other/builds")).json() == []
    other = await api.get(f"/apps/other/builds/{ids[0]}")
    assert other.status_code == 404
    assert other.json() == {"error": f"no such build: {ids[0]}"}
    assert (await api.get("/apps/nope/builds")).status_code == 404
    for build in ids:
        assert (await ended(provider, "myapp", build)).status == "complete"


async def test_a_compose_file_is_read_when_there_is_no_convox_yml(api: httpx.AsyncClient, provider: Provider) -> None:
    compose = b"web:\n  build: .\n  ports: ['80:3000']\n"
    response = await api.post(
        "/apps/myapp/builds", content=tgz({"docker-compose.yml": compose, "Dockerfile": DOCKERFILE})
    )
    assert response.status_code == 201, response.text
    assert json.loads(response.json()["manifest"])["services"]["web"]["port"] == 3000
    assert (await ended(provider, "myapp", response.json()["id"])).status == "complete"


async def test_the_log_is_text_over_http(api: httpx.AsyncClient, provider: Provider) -> None:
    build = (await api.post("/apps/myapp/builds", content=source())).json()
    done = await ended(provider, "myapp", build["id"])
    response = await api.get(f"/apps/myapp/builds/{build['id']}/logs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "Step 1/2 : FROM rack-test/busybox:1\n" in response.text
    assert "Step 2/2 : COPY . /app\n" in response.text
    assert response.text.endswith(f"Build {build['id']} complete: release {done.release}\n")
    assert (await api.get("/apps/myapp/builds/BNOPENOPENO/logs")).status_code == 404


@pytest.fixture
async def served(tmp_path: Path, provider: Provider) -> AsyncIterator[str]:
    """The service on a real uvicorn (websockets need one), at ``http://127.0.0.1:PORT``."""
    app = service(tmp_path, provider)
    async with on_uvicorn(app) as port:
        await provider.apps.create("myapp")
        yield f"http://127.0.0.1:{port}"


async def read_stream(url: str, path: str) -> tuple[bytes, stream.Status, str | None]:
    output = b""
    ws_url = url.replace("http://", "ws://") + path
    async with websockets.connect(ws_url, subprotocols=[stream.SUBPROTOCOL]) as socket:  # type: ignore[list-item]
        async for message in socket:
            assert isinstance(message, bytes)
            channel, payload = stream.decode(message)
            if channel == stream.Channel.STDOUT:
                output += payload
            elif channel == stream.Channel.STATUS:
                return output, stream.parse_status(payload), socket.subprotocol
    raise AssertionError("the stream ended without a status")


async def test_the_log_socket_ends_with_the_build_status(served: str, provider: Provider) -> None:
    async with httpx.AsyncClient(base_url=served) as client:
        ok = (await client.post("/apps/myapp/builds", content=source())).json()
        failed = (await client.post("/apps/myapp/builds", content=source(Dockerfile=FAILING))).json()
        output, status, subprotocol = await read_stream(served, f"/apps/myapp/builds/{ok['id']}/logs")
        assert b"Step 1/2 : FROM rack-test/busybox:1\n" in output and b"Step 2/2 : COPY . /app\n" in output
        assert output == (await client.get(f"/apps/myapp/builds/{ok['id']}/logs")).content
        assert status == stream.Status(exit_code=0)
        assert subprotocol == stream.SUBPROTOCOL
        _, status, _ = await read_stream(served, f"/apps/myapp/builds/{failed['id']}/logs")
    record = await provider.builds.get("myapp", failed["id"])
    assert record.status == "failed" and record.error.startswith("web: ")
    assert status == stream.Status(error=record.error)
