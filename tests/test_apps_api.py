"""The apps service's HTTP API, in process, over the real local provider (SQLite under a temporary data dir;
the service runs the rack's workers, so the Docker Engine too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.apps import create_app
from shared import __version__
from shared.provider.local import LocalProvider
from tests.conftest import API_RACK, local_provider, local_settings


async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://apps") as client:
            yield client


@pytest.fixture
async def api(tmp_path: Path, api_engine: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(local_settings(tmp_path), provider=local_provider(tmp_path), internal=False)
    async for client in serve(app):
        yield client


async def test_create_then_list_and_get_an_app(api: httpx.AsyncClient) -> None:
    created = await api.post("/apps", json={"name": "myapp"})
    assert created.status_code == 201
    assert created.json() == {
        "name": "myapp",
        "status": "created",
        "release": "",
        "balancer": "",
        "failed_release": "",
        "failure": "",
    }
    assert [a["name"] for a in (await api.get("/apps")).json()] == ["myapp"]
    assert (await api.get("/apps/myapp")).json()["status"] == "created"


async def test_duplicate_app_is_409(api: httpx.AsyncClient) -> None:
    await api.post("/apps", json={"name": "myapp"})
    response = await api.post("/apps", json={"name": "myapp"})
    assert response.status_code == 409
    assert response.json() == {"error": "app already exists: myapp"}


@pytest.mark.parametrize("name", ["MyApp", "1app", "my_app", "a" * 31, "", "-app", "app!"])
async def test_bad_app_name_is_400_and_creates_nothing(api: httpx.AsyncClient, name: str) -> None:
    response = await api.post("/apps", json={"name": name})
    assert response.status_code == 400
    assert "invalid app name" in response.json()["error"]
    assert (await api.get("/apps")).json() == []


async def test_a_thirty_character_name_is_fine(api: httpx.AsyncClient) -> None:
    assert (await api.post("/apps", json={"name": "a" + "b-9" * 9 + "z" * 2})).status_code == 201


@pytest.mark.parametrize("body", [None, {}, {"name": 5}, {"name": "ok", "extra": 1}, [1]])
async def test_malformed_body_is_400(api: httpx.AsyncClient, body: object) -> None:
    response = await api.post("/apps", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}


async def test_unknown_app_is_404(api: httpx.AsyncClient) -> None:
    for method in ("GET", "DELETE"):
        response = await api.request(method, "/apps/nope")
        assert response.status_code == 404
        assert response.json() == {"error": "no such app: nope"}


async def test_delete_removes_the_app(api: httpx.AsyncClient) -> None:
    await api.post("/apps", json={"name": "gone"})
    assert (await api.delete("/apps/gone")).status_code == 204
    assert (await api.get("/apps/gone")).status_code == 404


async def test_unknown_route_is_404_json(api: httpx.AsyncClient) -> None:
    response = await api.get("/nowhere")
    assert response.status_code == 404
    assert "error" in response.json()


async def test_system_shows_name_version_provider_status(api: httpx.AsyncClient) -> None:
    assert (await api.get("/system")).json() == {
        "name": API_RACK,
        "version": __version__,
        "provider": "local",
        "status": "running",
    }


async def test_internal_service_refuses_requests_without_the_gateway_secret(tmp_path: Path, api_engine: str) -> None:
    settings = local_settings(tmp_path, internal_secret="s3cret")
    async for client in serve(create_app(settings, provider=local_provider(tmp_path))):
        refused = await client.get("/apps")
        assert refused.status_code == 403
        assert refused.json() == {"error": "forbidden: internal service"}
        assert (await client.get("/apps", headers={"x-rack-internal": "wrong"})).status_code == 403
        assert (await client.get("/check")).status_code == 403
        assert (await client.get("/apps", headers={"x-rack-internal": "s3cret"})).status_code == 200


async def test_openapi_has_stable_operation_ids_and_no_422(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    ops = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert {"app_list", "app_create", "app_get", "app_delete", "system_get"} <= ops
    assert all("422" not in op["responses"] for item in doc["paths"].values() for op in item.values())


async def test_the_apps_service_runs_none_of_the_workers(
    tmp_path: Path, api_engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = local_provider(tmp_path)
    assert isinstance(provider, LocalProvider)
    started: list[str] = []

    async def workers(ready: Callable[[], None] | None = None) -> None:  # what would start them, watched
        started.append("workers")

    monkeypatch.setattr(provider, "workers", workers)
    async for client in serve(create_app(local_settings(tmp_path), provider=provider, internal=False)):
        assert (await client.get("/apps")).status_code == 200
        assert not provider.promotions.owner  # the owner's loops run in the logs service
    assert started == []


async def test_system_images_says_whether_builds_can_start_from_each(
    api: httpx.AsyncClient, busybox_image: str
) -> None:
    missing = f"rack-test/missing-{API_RACK}:1"
    answer = await api.get("/system/images", params={"image": [busybox_image, missing]})
    assert answer.status_code == 200
    assert answer.json() == [
        {"image": busybox_image, "present": True, "pullable": None},
        {"image": missing, "present": False, "pullable": False},
    ]


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, "image"),
        ({"image": [f"app{n}:1" for n in range(9)]}, "ask for 1 to 8 images, not 9"),
        ({"image": ["Python:3"]}, "invalid image reference: 'Python:3'"),
        ({"image": ["python:3 --rm"]}, "invalid image reference"),
        ({"image": ["../containers"]}, "invalid image reference"),
        ({"image": ["a" * 256]}, "invalid image reference"),
    ],
)
async def test_system_images_refuses_what_is_no_image_reference(
    api: httpx.AsyncClient, params: dict[str, list[str]], error: str
) -> None:
    answer = await api.get("/system/images", params=params)
    assert answer.status_code == 400
    assert error in answer.json()["error"]
