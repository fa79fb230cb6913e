"""The provisioner's HTTP API, in process, over a fake provider and a fake apps service: backing services,
links (the environment change goes through a release that is promoted), rack params, routing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, cast

import httpx
import pytest

from services.gateway.routing import service_for
from services.provisioner import create_app
from services.provisioner.linking import env_key
from shared.config import RackSettings
from shared.errors import Conflict, NotFound
from shared.ids import release_id
from shared.models import App, Release, Resource, ResourceType
from shared.names import check_service_name, manifest_service
from shared.provider.local.resource_kinds import PARAM_DEFAULTS, kind_of
from tests.fakes import FakeApps, as_provider

PASSWORD = "0123456789abcdef" * 3


class FakeResources:
    """The contract's rules (types, names, duplicates, links) without containers."""

    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.items: dict[str, Resource] = {}
        self.manifests: dict[str, dict[str, str]] = {}

    def _url(self, resource: Resource, reveal: bool) -> str:
        kind = kind_of(resource.type)
        return f"{kind.scheme}://app:{PASSWORD if reveal else '***'}@{resource.name}:{kind.port}/app"

    async def create(self, kind: str, name: str) -> Resource:
        kind_of(kind)
        check_service_name(name)
        if name in self.items:
            raise Conflict(f"service already exists: {name}")
        self.items[name] = Resource(name=name, type=cast(ResourceType, kind), status="running")
        return await self.get(name)

    async def get(self, name: str, reveal: bool = False) -> Resource:
        check_service_name(name)
        if name not in self.items:
            raise NotFound(f"no such service: {name}")
        resource = self.items[name]
        return resource.model_copy(update={"url": self._url(resource, reveal), "apps": list(resource.apps)})

    async def list(self, reveal: bool = False) -> list[Resource]:
        return [await self.get(name, reveal) for name in sorted(self.items)]

    async def delete(self, name: str) -> None:
        resource = await self.get(name)
        if resource.apps:
            raise Conflict(f"service {name} is linked to {', '.join(resource.apps)}: unlink it first")
        del self.items[name]

    async def link(self, name: str, app: str) -> Resource:
        resource = await self.get(name)
        await self.apps.get(app)
        if app in resource.apps:
            raise Conflict(f"service {name} is already linked to {app}")
        self.items[name].apps = sorted([*resource.apps, app])
        return await self.get(name)

    async def unlink(self, name: str, app: str) -> Resource:
        resource = await self.get(name)
        if app not in resource.apps:
            raise NotFound(f"service {name} is not linked to {app}")
        self.items[name].apps = [a for a in resource.apps if a != app]
        return await self.get(name)

    async def declare(self, app: str, name: str, kind: str) -> Resource:
        service = manifest_service(app, name)
        await self.apps.get(app)
        if service not in self.items:
            await self.create(kind, service)
        if app not in self.items[service].apps:
            await self.link(service, app)
        self.manifests.setdefault(app, {})[name] = service
        return await self.get(service, reveal=True)

    async def declared(self, app: str) -> dict[str, str]:
        return dict(self.manifests.get(app, {}))

    async def undeclare(self, app: str, name: str) -> None:
        service = self.manifests.get(app, {}).pop(name)
        await self.unlink(service, app)


class FakeReleases:
    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.made: list[Release] = []
        self.promotes: FakePromotes | None = None

    async def promote(self, app: str, release_id: str) -> App:
        assert self.promotes is not None, "no promotes in this test"
        await self.promotes.promote(app, release_id)
        return await self.apps.get(app)

    async def settled(self, app: str, within: float) -> App:
        return await self.apps.get(app)

    async def create(
        self, app: str, *, build: str | None = None, env: dict[str, str] | None = None, description: str = ""
    ) -> Release:
        await self.apps.get(app)
        release = Release(
            id=release_id(), app=app, env=dict(env or {}), description=description, created=datetime.now(UTC)
        )
        self.made.append(release)
        return release

    async def environment(self, app: str) -> dict[str, str]:
        await self.apps.get(app)
        mine = [r for r in self.made if r.app == app]
        return dict(mine[-1].env) if mine else {}

    async def change_env(
        self,
        app: str,
        *,
        set: dict[str, str] | None = None,
        unset: Collection[str] = (),
        replace: bool = False,
        description: str = "",
    ) -> Release:
        env = {} if replace else await self.environment(app)
        env.update(set or {})
        for key in unset:
            if key not in env:
                raise NotFound(f"no such environment variable: {key}")
            del env[key]
        return await self.create(app, env=env, description=description)


class FakeParams:
    def __init__(self) -> None:
        self.values = dict(PARAM_DEFAULTS)

    async def get(self) -> dict[str, str]:
        return dict(self.values)

    async def set(self, values: dict[str, str]) -> dict[str, str]:
        from shared.errors import BadRequest

        for key in values:
            if key not in PARAM_DEFAULTS:
                raise BadRequest(f"unknown rack parameter: {key}")
        for key, value in values.items():
            self.values[key] = value or PARAM_DEFAULTS[key]
        return await self.get()


class FakeProvider:
    name = "fake"

    def __init__(self) -> None:
        self.apps = FakeApps()
        self.releases = FakeReleases(self.apps)
        self.resources = FakeResources(self.apps)
        self.params = FakeParams()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class FakePromotes:
    """The roll-outs behind ``provider.releases.promote``: at once (the app serves the release), after
    ``busy`` refusals; ``fail`` makes it fail."""

    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.promoted: list[tuple[str, str]] = []
        self.busy = 0
        self.fail = False

    async def promote(self, app: str, release: str) -> None:
        if self.busy:
            self.busy -= 1
            raise Conflict(f"app {app} is already updating")
        self.promoted.append((app, release))
        current = self.apps.apps[app]
        if self.fail:
            self.apps.apps[app] = current.model_copy(update={"status": "failed"})
        else:
            self.apps.apps[app] = current.model_copy(update={"status": "running", "release": release})


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def apps_service(provider: FakeProvider) -> FakePromotes:
    provider.releases.promotes = FakePromotes(provider.apps)
    return provider.releases.promotes


@pytest.fixture
async def api(provider: FakeProvider, apps_service: FakePromotes) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(RackSettings(), provider=as_provider(provider), internal=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provisioner") as client:
            yield client


def deployed(provider: FakeProvider, name: str) -> None:
    """An app with an active release (as after `convox deploy`)."""
    provider.apps.apps[name] = App(name=name, status="running", release="RFIRSTRELEA")


async def test_create_list_get_with_the_password_hidden(api: httpx.AsyncClient, provider: FakeProvider) -> None:
    created = await api.post("/services", json={"type": "postgres"})
    assert created.status_code == 201
    assert created.json() == {
        "name": "postgres",
        "type": "postgres",
        "status": "running",
        "url": "postgres://app:***@postgres:5432/app",
        "apps": [],
        "message": "",
    }
    assert (await api.post("/services", json={"type": "redis", "name": "cache"})).status_code == 201
    assert [(r["name"], r["type"]) for r in (await api.get("/services")).json()] == [
        ("cache", "redis"),
        ("postgres", "postgres"),
    ]
    assert (await api.get("/services/cache")).json()["url"] == "redis://app:***@cache:6379/app"
    revealed = await api.get("/services/postgres", params={"reveal": "true"})
    assert PASSWORD in revealed.json()["url"]
    assert all(PASSWORD in r["url"] for r in (await api.get("/services", params={"reveal": True})).json())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"type": "mongodb"},
            400,
            "unknown service type: 'mongodb' (known: mariadb, memcached, mysql, postgres, redis)",
        ),
        ({"type": "redis", "name": "Bad_Name"}, 400, "invalid service name: 'Bad_Name'"),
        ({"type": "redis", "name": "x" * 31}, 400, "invalid service name"),
        ({"type": "redis", "size": 5}, 400, "size: Extra inputs are not permitted"),
        ({}, 400, "type: Field required"),
    ],
)
async def test_bad_create_input_is_400_and_creates_nothing(
    api: httpx.AsyncClient, body: dict[str, object], status: int, message: str
) -> None:
    response = await api.post("/services", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert (await api.get("/services")).json() == []


async def test_a_duplicate_name_is_409(api: httpx.AsyncClient) -> None:
    assert (await api.post("/services", json={"type": "mysql", "name": "db"})).status_code == 201
    response = await api.post("/services", json={"type": "postgres", "name": "db"})
    assert (response.status_code, response.json()) == (409, {"error": "service already exists: db"})


async def test_link_puts_the_url_in_a_promoted_release(
    api: httpx.AsyncClient, provider: FakeProvider, apps_service: FakePromotes
) -> None:
    deployed(provider, "myapp")
    await api.post("/services", json={"type": "postgres", "name": "main-db"})
    linked = await api.post("/services/main-db/links", json={"app": "myapp"})
    assert linked.status_code == 200, linked.text
    assert linked.json()["apps"] == ["myapp"]
    assert PASSWORD not in linked.text
    (release,) = provider.releases.made
    assert release.env == {"MAIN_DB_URL": f"postgres://app:{PASSWORD}@main-db:5432/app"}
    assert release.description == "link main-db"
    assert apps_service.promoted == [("myapp", release.id)]
    assert (await api.get("/services/main-db")).json()["apps"] == ["myapp"]


async def test_link_keeps_the_rest_of_the_environment(api: httpx.AsyncClient, provider: FakeProvider) -> None:
    deployed(provider, "myapp")
    await provider.releases.create("myapp", env={"GREETING": "hello"})
    await api.post("/services", json={"type": "redis"})
    assert (await api.post("/services/redis/links", json={"app": "myapp"})).status_code == 200
    assert set(await provider.releases.environment("myapp")) == {"GREETING", "REDIS_URL"}


async def test_linking_an_undeployed_app_makes_a_release_for_its_first_deploy(
    api: httpx.AsyncClient, provider: FakeProvider, apps_service: FakePromotes
) -> None:
    await provider.apps.create("fresh")
    await api.post("/services", json={"type": "redis"})
    assert (await api.post("/services/redis/links", json={"app": "fresh"})).status_code == 200
    assert "REDIS_URL" in await provider.releases.environment("fresh")
    assert apps_service.promoted == []


async def test_link_waits_out_a_roll_out_in_progress(
    api: httpx.AsyncClient, provider: FakeProvider, apps_service: FakePromotes
) -> None:
    deployed(provider, "busy")
    apps_service.busy = 2
    await api.post("/services", json={"type": "redis"})
    assert (await api.post("/services/redis/links", json={"app": "busy"})).status_code == 200
    assert len(apps_service.promoted) == 1


async def test_a_failed_roll_out_is_an_error_naming_the_release(
    api: httpx.AsyncClient, provider: FakeProvider, apps_service: FakePromotes
) -> None:
    deployed(provider, "broken")
    apps_service.fail = True
    await api.post("/services", json={"type": "redis"})
    response = await api.post("/services/redis/links", json={"app": "broken"})
    assert response.status_code == 502
    release = provider.releases.made[-1].id
    assert response.json()["error"].startswith(f"release {release} failed to roll out; RFIRSTRELEA is still serving")


async def test_link_errors(api: httpx.AsyncClient, provider: FakeProvider) -> None:
    deployed(provider, "myapp")
    await api.post("/services", json={"type": "redis"})
    unknown_service = await api.post("/services/nope/links", json={"app": "myapp"})
    assert (unknown_service.status_code, unknown_service.json()) == (404, {"error": "no such service: nope"})
    unknown_app = await api.post("/services/redis/links", json={"app": "nope"})
    assert (unknown_app.status_code, unknown_app.json()) == (404, {"error": "no such app: nope"})
    assert provider.releases.made == []
    assert (await api.post("/services/redis/links", json={"app": "myapp"})).status_code == 200
    twice = await api.post("/services/redis/links", json={"app": "myapp"})
    assert (twice.status_code, twice.json()) == (409, {"error": "service redis is already linked to myapp"})
    assert len(provider.releases.made) == 1
    assert (await api.post("/services/redis/links", json={})).status_code == 400


async def test_delete_is_refused_while_linked_then_unlink_and_delete(
    api: httpx.AsyncClient, provider: FakeProvider, apps_service: FakePromotes
) -> None:
    deployed(provider, "myapp")
    await provider.releases.create("myapp", env={"KEEP": "1"})
    await api.post("/services", json={"type": "mysql"})
    await api.post("/services/mysql/links", json={"app": "myapp"})
    refused = await api.delete("/services/mysql")
    assert refused.status_code == 409
    assert refused.json() == {"error": "service mysql is linked to myapp: unlink it first"}
    unlinked = await api.delete("/services/mysql/links/myapp")
    assert unlinked.status_code == 200
    assert unlinked.json()["apps"] == []
    assert await provider.releases.environment("myapp") == {"KEEP": "1"}
    assert provider.releases.made[-1].description == "unlink mysql"
    assert [release for _, release in apps_service.promoted] == [r.id for r in provider.releases.made[1:]]
    again = await api.delete("/services/mysql/links/myapp")
    assert (again.status_code, again.json()) == (404, {"error": "service mysql is not linked to myapp"})
    assert (await api.delete("/services/mysql")).status_code == 204
    assert (await api.get("/services/mysql")).status_code == 404
    assert (await api.delete("/services/mysql")).status_code == 404


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


async def test_a_builds_manifest_resources_are_made_once_linked_and_unlinked_when_dropped(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    deployed(provider, "myapp")
    url = f"postgres://app:{PASSWORD}@myapp-database:5432/app"
    first = await api.post("/apps/myapp/resources", json={"resources": {"database": "postgres"}})
    assert (first.status_code, first.json()) == (200, {"set": {"DATABASE_URL": url}, "unset": []})
    again = await api.post("/apps/myapp/resources", json={"resources": {"database": "postgres"}})
    assert again.json() == {"set": {"DATABASE_URL": url}, "unset": []}
    assert [(r["name"], r["apps"]) for r in (await api.get("/services")).json()] == [("myapp-database", ["myapp"])]
    refused = await api.delete("/services/myapp-database/links/myapp")
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("service myapp-database is resources.database of myapp's manifest")
    dropped = await api.post("/apps/myapp/resources", json={"resources": {}})
    assert dropped.json() == {"set": {}, "unset": ["DATABASE_URL"]}
    assert [(r["name"], r["apps"]) for r in (await api.get("/services")).json()] == [("myapp-database", [])]
    assert provider.releases.made == []  # the build makes the release, with these in it


async def test_a_manifest_resource_whose_service_name_is_too_long_is_400(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    deployed(provider, "an-app-with-a-long-name")
    response = await api.post("/apps/an-app-with-a-long-name/resources", json={"resources": {"database": "redis"}})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "resources.database: the service name an-app-with-a-long-name-database is too long (at most 30 "
        "characters, the app's name and the resource's together): give the resource a shorter name"
    )
    bad = await api.post("/apps/myapp/resources", json={"resources": {"Bad_Name": "redis"}})
    assert bad.status_code == 400
    assert (await api.get("/services")).json() == []
