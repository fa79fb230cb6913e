"""The builds service's HTTP and websocket API, in process, over the real local provider (SQLite and files under
a temporary data dir), where no build runs: uploads, their limits and refusals (nothing half-made left behind),
unknown builds and apps, the start steps. The API over builds that run (which needs the Docker Engine) is in
tests/test_builds_run_api.py."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import InvalidStatus

from services.builds import create_app
from services.builds.resources import ProvisionerResources
from services.builds.settings import BuildsSettings
from shared.errors import Conflict
from shared.manifest import Manifest
from shared.models import Build, BuildOptions
from shared.provider import Provider
from shared.provider.contract import ResourceHook
from tests.conftest import local_provider, local_settings, on_uvicorn

CONVOX_YML = b"services:\n  web:\n    build: .\n    port: 3000\n"
DOCKERFILE = b"FROM rack-test/busybox:1\nCOPY . /app\n"


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
def provider(tmp_path: Path) -> Provider:
    """The real local provider over ``tmp_path``, opened by the service (the apps ``myapp`` and ``other`` are
    made once it is, by ``api``)."""
    return local_provider(tmp_path)


def service(tmp_path: Path, provider: Provider, max_source_size: int = 10_000_000) -> FastAPI:
    return create_app(
        local_settings(tmp_path),
        provider=provider,
        internal=False,
        builds=BuildsSettings(max_source_size=max_source_size),
    )


@pytest.fixture
async def api(tmp_path: Path, provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    app = service(tmp_path, provider)
    async with app.router.lifespan_context(app):
        for name in ("myapp", "other"):
            await provider.apps.create(name)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://builds") as client:
            yield client


def leftovers(tmp_path: Path) -> list[str]:
    """What is left of uploads in the service's temporary directory."""
    uploads = tmp_path / "tmp"
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


def objects_left(tmp_path: Path) -> list[str]:
    """The files the provider keeps as stored objects (complete or partial), of every app."""
    root = tmp_path / "objects"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def refusing_create_double(stored: list[bool], provider: Provider) -> Callable[..., object]:
    """A test double of ``BuildsAPI.create`` alone: a provider that refuses the build (Conflict) once the
    source object is stored, which the real one does not do on demand; it notes that the object was there."""

    async def create(app: str, source: str, manifest: Manifest, options: BuildOptions) -> Build:
        stored.append(await provider.objects.exists(app, source))
        raise Conflict("the provider refuses this build")

    return create


async def test_a_build_the_provider_refuses_leaves_no_source_object(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[bool] = []
    monkeypatch.setattr(provider.builds, "create", refusing_create_double(stored, provider))
    response = await api.post("/apps/myapp/builds", params={"description": "refuse"}, content=source())
    assert (response.status_code, response.json()) == (409, {"error": "the provider refuses this build"})
    assert stored == [True]  # the object was stored, then removed
    assert objects_left(tmp_path) == [] and await provider.builds.list("myapp") == []
    assert leftovers(tmp_path) == []


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


async def test_an_upload_over_the_cap_is_413_and_leaves_nothing(tmp_path: Path, provider: Provider) -> None:
    app = service(tmp_path, provider, max_source_size=4096)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://b") as api:
        await provider.apps.create("myapp")

        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"\0" * 1024

        response = await api.post("/apps/myapp/builds", content=body())
        assert response.status_code == 413
        assert response.json() == {"error": "source archive is larger than 4 KiB"}
        assert leftovers(tmp_path) == []
        assert objects_left(tmp_path) == []  # no source object left either
        assert await provider.builds.list("myapp") == []


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
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path, archive: bytes, message: str
) -> None:
    response = await api.post("/apps/myapp/builds", content=archive)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert leftovers(tmp_path) == []
    assert objects_left(tmp_path) == []  # no source object left either
    assert await provider.builds.list("myapp") == []


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
    provider: Provider,
    tmp_path: Path,
    files: dict[str, bytes],
    params: dict[str, str],
    message: str,
) -> None:
    response = await api.post("/apps/myapp/builds", params=params, content=tgz(files))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert await provider.builds.list("myapp") == []
    assert leftovers(tmp_path) == []
    assert objects_left(tmp_path) == []  # no source object left either


@pytest.fixture
async def served(tmp_path: Path, provider: Provider) -> AsyncIterator[str]:
    """The service on a real uvicorn (websockets need one), at ``http://127.0.0.1:PORT``."""
    app = service(tmp_path, provider)
    async with on_uvicorn(app) as port:
        await provider.apps.create("myapp")
        yield f"http://127.0.0.1:{port}"


async def test_the_log_socket_of_an_unknown_build_or_app_is_refused_with_404(served: str) -> None:
    for path in ("/apps/myapp/builds/BNOPENOPENO/logs", "/apps/nope/builds/BNOPENOPENO/logs"):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(served.replace("http://", "ws://") + path):
                pass
        assert refused.value.response.status_code == 404
        assert b"no such" in (refused.value.response.body or b"")


async def test_start_links_the_resources_hook_and_clears_old_uploads(
    tmp_path: Path, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp" / "upload-0123456789abcdef").mkdir(parents=True)
    (tmp_path / "tmp" / "upload-0123456789abcdef.tgz").write_bytes(b"partial")
    linked: list[ResourceHook] = []
    link = provider.builds.link_resources

    def watched(hook: ResourceHook) -> None:  # the real one, watched
        linked.append(hook)
        link(hook)

    monkeypatch.setattr(provider.builds, "link_resources", watched)
    app = service(tmp_path, provider)
    assert linked == []
    async with app.router.lifespan_context(app):
        assert [type(hook) for hook in linked] == [ProvisionerResources]
        assert leftovers(tmp_path) == []


def test_openapi_documents_the_upload_and_the_log_socket(tmp_path: Path, provider: Provider) -> None:
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
