"""The builds service's HTTP and websocket API, in process, over a fake builds provider: uploads, their
limits and refusals (nothing half-made left behind), records, logs, the status at the end of a log stream."""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import InvalidStatus

from services.builds import create_app
from services.builds.resources import ProvisionerResources
from services.builds.settings import BuildsSettings
from shared import stream
from shared.config import RackSettings
from shared.errors import Conflict, NotFound
from shared.ids import build_id
from shared.manifest import Manifest
from shared.models import Build, BuildOptions
from tests.conftest import on_uvicorn
from tests.fakes import FakeApps, FakeObjects, FakeProvider, as_provider

CONVOX_YML = b"services:\n  web:\n    build: .\n    port: 3000\n"
DOCKERFILE = b"FROM rack-test/busybox:1\nCOPY . /app\n"


class FakeBuilds:
    """Records what the service hands over; a build is complete (or failed, when its description says so)
    at once, with a two-line log."""

    def __init__(self, apps: FakeApps, objects: FakeObjects) -> None:
        self.apps = apps
        self.objects = objects
        self.builds: dict[str, Build] = {}
        self.sources: dict[str, list[str]] = {}
        self.manifests: dict[str, Manifest] = {}
        self.resource_hook: object = None

    def link_resources(self, hook: object) -> None:
        self.resource_hook = hook

    async def running(self) -> int:
        return 0

    async def create(self, app: str, source: str, manifest: Manifest, options: BuildOptions) -> Build:
        if options.description == "refuse":  # what a provider refusing the build does: the object stays
            raise Conflict("the provider refuses this build")
        data = b"".join([chunk async for chunk in await self.objects.fetch(app, source)])
        build = build_id()
        self.sources[build] = listing(data)
        self.manifests[build] = manifest
        await self.objects.delete(app, source)  # the provider owns the object
        failed = options.description == "fail"
        self.builds[build] = Build(
            id=build,
            app=app,
            status="failed" if failed else "complete",
            description=options.description,
            manifest=manifest.model_dump_json(),
            release="" if failed else "RAAAAAAAAAA",
            error="web: RUN false" if failed else "",
            started=datetime.now(UTC),
            ended=datetime.now(UTC),
        )
        return self.builds[build]

    async def get(self, app: str, build_id: str) -> Build:
        build = self.builds.get(build_id)
        if build is None or build.app != app:
            await self.apps.get(app)
            raise NotFound(f"no such build: {build_id}")
        return build

    async def list(self, app: str, limit: int = 20) -> list[Build]:
        await self.apps.get(app)
        return [b for b in reversed(self.builds.values()) if b.app == app][:limit]

    async def logs(self, app: str, build_id: str, follow: bool = True) -> AsyncIterator[bytes]:
        await self.get(app, build_id)
        yield b"Step 1/2 : FROM rack-test/busybox:1\n"
        yield b"Step 2/2 : COPY . /app\n"


def listing(archive: bytes) -> list[str]:
    """The members of a .tgz, as paths relative to its root."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = {posixpath.normpath(m.name) for m in tar.getmembers()}
    parents = {posixpath.dirname(name) for name in names}
    return sorted((names | parents) - {"", "."})


class FakeBuildsProvider(FakeProvider):
    def __init__(self) -> None:
        super().__init__()
        self.builds = FakeBuilds(self.apps, self.objects)


def tgz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


def source(**extra: bytes) -> bytes:
    return tgz({"convox.yml": CONVOX_YML, "Dockerfile": DOCKERFILE, "index.html": b"hi", **extra})


@pytest.fixture
def provider() -> FakeBuildsProvider:
    provider = FakeBuildsProvider()
    provider.apps.apps["myapp"] = provider.apps.apps.get("myapp") or _app("myapp")
    provider.apps.apps["other"] = _app("other")
    return provider


def _app(name: str) -> Any:
    from shared.models import App

    return App(name=name, status="running")


def service(tmp_path: Path, provider: FakeBuildsProvider, max_source_size: int = 10_000_000) -> FastAPI:
    return create_app(
        RackSettings(data_dir=tmp_path),
        provider=as_provider(provider),
        internal=False,
        builds=BuildsSettings(max_source_size=max_source_size),
    )


@pytest.fixture
async def api(tmp_path: Path, provider: FakeBuildsProvider) -> AsyncIterator[httpx.AsyncClient]:
    app = service(tmp_path, provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://builds") as client:
            yield client


def leftovers(tmp_path: Path) -> list[str]:
    uploads = tmp_path / "tmp"
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


async def test_upload_makes_a_build_from_the_extracted_source(
    api: httpx.AsyncClient, provider: FakeBuildsProvider, tmp_path: Path
) -> None:
    response = await api.post(
        "/apps/myapp/builds",
        params={"description": "first", "no_cache": "true"},
        content=source(**{"sub/x.txt": b"x"}),
        headers={"content-type": "application/gzip"},
    )
    assert response.status_code == 201, response.text
    build = response.json()
    assert build["id"].startswith("B") and len(build["id"]) == 11
    assert (build["app"], build["description"], build["status"]) == ("myapp", "first", "complete")
    assert provider.builds.sources[build["id"]] == ["Dockerfile", "convox.yml", "index.html", "sub", "sub/x.txt"]
    assert provider.builds.manifests[build["id"]].services["web"].port == 3000
    assert leftovers(tmp_path) == []
    assert provider.objects.objects == {}  # no source object left either
    assert (await api.get(f"/apps/myapp/builds/{build['id']}")).json() == build
    assert [b["id"] for b in (await api.get("/apps/myapp/builds")).json()] == [build["id"]]


async def test_a_build_the_provider_refuses_leaves_no_source_object(
    api: httpx.AsyncClient, provider: FakeBuildsProvider, tmp_path: Path
) -> None:
    response = await api.post("/apps/myapp/builds", params={"description": "refuse"}, content=source())
    assert (response.status_code, response.json()) == (409, {"error": "the provider refuses this build"})
    assert provider.objects.objects == {} and provider.builds.builds == {}
    assert leftovers(tmp_path) == []


async def test_builds_are_listed_newest_first_and_found_only_through_their_app(api: httpx.AsyncClient) -> None:
    ids = [(await api.post("/apps/myapp/builds", content=source())).json()["id"] for _ in range(3)]
    assert [b["id"] for b in (await api.get("/apps/myapp/builds")).json()] == ids[::-1]
    assert [b["id"] for b in (await api.get("/apps/myapp/builds", params={"limit": 2})).json()] == ids[:0:-1]
    assert (await api.get("/apps/other/builds")).json() == []
    other = await api.get(f"/apps/other/builds/{ids[0]}")
    assert other.status_code == 404
    assert other.json() == {"error": f"no such build: {ids[0]}"}
    assert (await api.get("/apps/nope/builds")).status_code == 404


async def test_an_unknown_app_is_404_before_the_body_is_read(api: httpx.AsyncClient, tmp_path: Path) -> None:
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(1)
        yield source()

    response = await api.post("/apps/nope/builds", content=body())
    assert response.status_code == 404
    assert response.json() == {"error": "no such app: nope"}
    assert read == []
    assert leftovers(tmp_path) == []


async def test_an_upload_over_the_cap_is_413_and_leaves_nothing(tmp_path: Path, provider: FakeBuildsProvider) -> None:
    app = service(tmp_path, provider, max_source_size=4096)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://b") as api:

        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"\0" * 1024

        response = await api.post("/apps/myapp/builds", content=body())
    assert response.status_code == 413
    assert response.json() == {"error": "source archive is larger than 4 KiB"}
    assert leftovers(tmp_path) == []
    assert provider.objects.objects == {}  # no source object left either
    assert provider.builds.builds == {}


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (tgz({"convox.yml": CONVOX_YML}, {"etc": "/etc"}), "bad archive member 'etc': symbolic link to an absolute"),
        (tgz({"convox.yml": CONVOX_YML, "../x": b"x"}), "bad archive member '../x'"),
        (b"this is not gzip", "not a readable tar.gz"),
        (b"", "the source archive is empty"),
    ],
)
async def test_a_bad_archive_is_400_and_leaves_nothing(
    api: httpx.AsyncClient, provider: FakeBuildsProvider, tmp_path: Path, archive: bytes, message: str
) -> None:
    response = await api.post("/apps/myapp/builds", content=archive)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert leftovers(tmp_path) == []
    assert provider.objects.objects == {}  # no source object left either
    assert provider.builds.builds == {}


@pytest.mark.parametrize(
    ("files", "params", "message"),
    [
        (
            {"convox.yml": b"services:\n  web:\n    build: .\n    port: many\n"},
            {},
            "convox.yml: services.web.port: ",
        ),
        ({"Dockerfile": DOCKERFILE}, {}, "no convox.yml or docker-compose.yml in the source"),
        ({"convox.yml": CONVOX_YML}, {}, "convox.yml: services.web.build.manifest: Dockerfile not found in ."),
        (
            {"convox.yml": b"services:\n  web:\n    build: api\n", "Dockerfile": DOCKERFILE},
            {},
            "convox.yml: services.web.build.path: api is not a directory in the source",
        ),
        (
            {"docker-compose.yml": b"web:\n  build: .\n  dockerfile: Dockerfile.web\n  ports: ['80:3000']\n"},
            {},
            "docker-compose.yml: services.web.dockerfile: Dockerfile.web not found in .",
        ),
        ({"convox.yml": CONVOX_YML, "Dockerfile": DOCKERFILE}, {"manifest": "../convox.yml"}, "manifest: must be"),
        ({"convox.yml": CONVOX_YML, "Dockerfile": DOCKERFILE}, {"manifest": "other.yml"}, "other.yml"),
    ],
)
async def test_a_bad_manifest_is_400_naming_file_and_key_and_makes_no_build(
    api: httpx.AsyncClient,
    provider: FakeBuildsProvider,
    tmp_path: Path,
    files: dict[str, bytes],
    params: dict[str, str],
    message: str,
) -> None:
    response = await api.post("/apps/myapp/builds", params=params, content=tgz(files))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert provider.builds.builds == {}
    assert leftovers(tmp_path) == []
    assert provider.objects.objects == {}  # no source object left either


async def test_a_compose_file_is_read_when_there_is_no_convox_yml(
    api: httpx.AsyncClient, provider: FakeBuildsProvider
) -> None:
    compose = b"web:\n  build: .\n  ports: ['80:3000']\n"
    response = await api.post("/apps/myapp/builds", content=tgz({"docker-compose.yml": compose, "Dockerfile": b""}))
    assert response.status_code == 201, response.text
    assert provider.builds.manifests[response.json()["id"]].services["web"].port == 3000


async def test_the_log_is_text_over_http(api: httpx.AsyncClient) -> None:
    build = (await api.post("/apps/myapp/builds", content=source())).json()
    response = await api.get(f"/apps/myapp/builds/{build['id']}/logs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Step 1/2 : FROM rack-test/busybox:1\nStep 2/2 : COPY . /app\n"
    assert (await api.get("/apps/myapp/builds/BNOPENOPENO/logs")).status_code == 404


@pytest.fixture
async def served(tmp_path: Path, provider: FakeBuildsProvider) -> AsyncIterator[str]:
    """The service on a real uvicorn (websockets need one), at ``http://127.0.0.1:PORT``."""
    app = service(tmp_path, provider)
    async with on_uvicorn(app) as port:
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


async def test_the_log_socket_ends_with_the_build_status(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as client:
        ok = (await client.post("/apps/myapp/builds", content=source())).json()
        failed = (await client.post("/apps/myapp/builds", params={"description": "fail"}, content=source())).json()
    output, status, subprotocol = await read_stream(served, f"/apps/myapp/builds/{ok['id']}/logs")
    assert output == b"Step 1/2 : FROM rack-test/busybox:1\nStep 2/2 : COPY . /app\n"
    assert status == stream.Status(exit_code=0)
    assert subprotocol == stream.SUBPROTOCOL
    _, status, _ = await read_stream(served, f"/apps/myapp/builds/{failed['id']}/logs")
    assert status == stream.Status(error="web: RUN false")


async def test_the_log_socket_of_an_unknown_build_or_app_is_refused_with_404(served: str) -> None:
    for path in ("/apps/myapp/builds/BNOPENOPENO/logs", "/apps/nope/builds/BNOPENOPENO/logs"):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(served.replace("http://", "ws://") + path):
                pass
        assert refused.value.response.status_code == 404
        assert b"no such" in (refused.value.response.body or b"")


async def test_start_links_the_resources_hook_and_clears_old_uploads(
    tmp_path: Path, provider: FakeBuildsProvider
) -> None:
    (tmp_path / "tmp" / "upload-0123456789abcdef").mkdir(parents=True)
    (tmp_path / "tmp" / "upload-0123456789abcdef.tgz").write_bytes(b"partial")
    app = service(tmp_path, provider)
    assert provider.builds.resource_hook is None
    async with app.router.lifespan_context(app):
        assert isinstance(provider.builds.resource_hook, ProvisionerResources)
        assert leftovers(tmp_path) == []


def test_openapi_documents_the_upload_and_the_log_socket(tmp_path: Path, provider: FakeBuildsProvider) -> None:
    doc = service(tmp_path, provider).openapi()
    create = doc["paths"]["/apps/{app}/builds"]["post"]
    assert create["operationId"] == "build_create"
    assert "application/octet-stream" in create["requestBody"]["content"]
    assert {"400", "404", "413"} <= set(create["responses"])
    assert {p["name"] for p in create["parameters"]} == {"app", "description", "manifest", "no_cache"}
    assert doc["paths"]["/apps/{app}/builds"]["get"]["operationId"] == "build_list"
    assert doc["paths"]["/apps/{app}/builds/{build_id}"]["get"]["operationId"] == "build_get"
    logs = doc["paths"]["/apps/{app}/builds/{build_id}/logs"]["get"]
    assert logs["operationId"] == "build_logs"
    assert "101" in logs["responses"]
    assert "v1.stream.rack" in logs["description"]
