"""The provisioner's HTTP API, in process, over the real local provider (SQLite under a temporary data dir),
where nothing asks the Docker Engine: rack params, operation ids and routing. Backing services, their
refusals, links (the environment change goes through a release that is promoted) and a manifest's resources,
over real servers, are in tests/test_services_run_api.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.gateway.routing import service_for
from services.provisioner import create_app
from services.provisioner.linking import env_key
from shared.provider import Provider
from tests.conftest import local_provider, local_settings


@pytest.fixture
def provider(tmp_path: Path) -> Provider:
    return local_provider(tmp_path)


@pytest.fixture
async def api(tmp_path: Path, provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(local_settings(tmp_path), provider=provider, internal=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provisioner") as client:
            yield client


async def test_rack_params_show_defaults_and_change(api: httpx.AsyncClient) -> None:
    assert (await api.get("/system/params")).json() == {
        "mariadb_image": "mariadb:11",
        "memcached_image": "memcached:1.6",
        "mysql_image": "mysql:8",
        "postgres_image": "postgres:16",
        "redis_image": "redis:7",
    }
    changed = await api.post("/system/params", json={"postgres_image": "example/postgres:15"})
    assert changed.status_code == 200
    assert changed.json()["postgres_image"] == "example/postgres:15"
    assert (await api.get("/system/params")).json()["postgres_image"] == "example/postgres:15"
    unknown = await api.post("/system/params", json={"color": "blue"})
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("unknown rack parameter: color")
    assert (await api.post("/system/params", json={"postgres_image": 5})).status_code == 400


async def test_operation_ids_and_the_gateway_route(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert ids == {
        "resource_list",
        "resource_create",
        "resource_get",
        "resource_delete",
        "resource_link",
        "resource_unlink",
        "resource_proxy",
        "resource_export",
        "resource_import",
        "system_params_get",
        "system_params_set",
    }
    create = document["components"]["schemas"]["ResourceCreate"]["properties"]
    assert create["type"]["enum"] == ["postgres", "mysql", "mariadb", "redis", "memcached"]
    paths = ("/services", "/services/db", "/services/db/links", "/services/db/links/myapp", "/services/db/proxy",
             "/services/db/export", "/services/db/import")  # fmt: skip
    for path in (*paths, "/system/params"):
        assert service_for(path) == "provisioner", path
    assert service_for("/system") == "apps"


@pytest.mark.parametrize(("name", "key"), [("postgres", "POSTGRES_URL"), ("my-db-2", "MY_DB_2_URL")])
def test_env_key(name: str, key: str) -> None:
    assert env_key(name) == key
