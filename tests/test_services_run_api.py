"""The provisioner's HTTP API, in process, over the real local provider: backing services as real servers on
the Docker Engine (the offline rack-local images), links whose environment change goes through a release that
the rack's workers roll out (apps built from busybox), a manifest's resources; with their refusals. The
provisioner's API where nothing asks the engine is in tests/test_services_api.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from services.provisioner import create_app
from shared.errors import Conflict
from shared.manifest import BuildSpec, Manifest, Service
from shared.models import App, BuildOptions, Resource
from shared.provider import Provider
from tests.conftest import local_provider, local_settings
from tests.contract.conftest import running_workers
from tests.sources import stored_source

SUITE = "bookworm"
LOCAL_IMAGES = {
    **{f"{kind}_image": f"rack-local/{kind}:{SUITE}" for kind in ("postgres", "mysql", "redis", "memcached")},
    "mariadb_image": f"rack-local/mysql:{SUITE}",  # MariaDB already
}
PASSWORD = re.compile(r"^[a-z]+://[a-z]*:([0-9a-f]{48})@")
"""A revealed URL: the service's generated password in it."""


def password(url: str) -> str:
    found = PASSWORD.match(url)
    assert found, url
    return found[1]


@pytest.fixture
def provider(tmp_path: Path, api_engine: str, busybox_image: str) -> Provider:
    return local_provider(tmp_path)


@pytest.fixture
async def api(tmp_path: Path, provider: Provider) -> AsyncIterator[httpx.AsyncClient]:
    """The provisioner, with the rack's workers running (they roll out what it promotes) and the offline
    images as the rack's params."""
    app = create_app(local_settings(tmp_path), provider=provider, internal=False)
    async with app.router.lifespan_context(app), running_workers(provider):
        await provider.params.set(LOCAL_IMAGES)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provisioner") as client:
            yield client


async def running(api: httpx.AsyncClient, name: str) -> Resource:
    """The service once its server answers."""
    async with asyncio.timeout(120):
        while (resource := Resource.model_validate((await api.get(f"/services/{name}")).json())).status != "running":
            assert resource.status == "creating", resource
            await asyncio.sleep(0.1)
    return resource


async def deployed(provider: Provider, app: str, tmp_path: Path, command: str = "sleep 3600") -> str:
    """``app`` built from busybox, running ``command`` as ``web``, and its release rolled out; its release."""
    await provider.apps.create(app)
    source = tmp_path / f"source-{app}"
    source.mkdir()
    (source / "Dockerfile").write_text("FROM rack-test/busybox:1\n")
    key = await stored_source(provider.objects, app, source)
    manifest = Manifest(services={"web": Service(name="web", build=BuildSpec(), command=command)})
    build = await provider.builds.create(app, key, manifest, BuildOptions())
    async for _ in provider.builds.logs(app, build.id, follow=True):
        pass
    build = await provider.builds.get(app, build.id)
    assert build.status == "complete", build
    await provider.releases.promote(app, build.release)
    settled = await provider.releases.settled(app, within=120)
    assert (settled.status, settled.release) == ("running", build.release), settled
    return build.release


async def release_ids(provider: Provider, app: str) -> list[str]:
    """The app's releases, oldest first."""
    return [release.id for release in reversed(await provider.releases.list(app))]


async def test_create_list_get_with_the_password_hidden(api: httpx.AsyncClient) -> None:
    created = await api.post("/services", json={"type": "postgres"})
    assert created.status_code == 201
    assert created.json() == {
        "name": "postgres",
        "type": "postgres",
        "status": "creating",
        "url": "postgres://app:***@postgres:5432/app",
        "apps": [],
        "message": "",
    }
    assert (await api.post("/services", json={"type": "redis", "name": "cache"})).status_code == 201
    assert (await running(api, "postgres")).model_dump() == {**created.json(), "status": "running"}
    assert [(r["name"], r["type"]) for r in (await api.get("/services")).json()] == [
        ("cache", "redis"),
        ("postgres", "postgres"),
    ]
    assert (await api.get("/services/cache")).json()["url"] == "redis://:***@cache:6379/0"
    revealed = (await api.get("/services/postgres", params={"reveal": "true"})).json()["url"]
    secret = password(revealed)
    assert revealed == f"postgres://app:{secret}@postgres:5432/app"
    urls = [r["url"] for r in (await api.get("/services", params={"reveal": True})).json()]
    assert [password(url) for url in urls][1] == secret and "***" not in "".join(urls)


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
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path
) -> None:
    await api.post("/services", json={"type": "postgres", "name": "main-db"})  # its server starts meanwhile
    first = await deployed(provider, "myapp", tmp_path)
    url = (await running(api, "main-db")).url
    revealed = (await api.get("/services/main-db", params={"reveal": "true"})).json()["url"]
    linked = await api.post("/services/main-db/links", json={"app": "myapp"})
    assert linked.status_code == 200, linked.text
    assert linked.json()["apps"] == ["myapp"]
    assert password(revealed) not in linked.text and linked.json()["url"] == url
    made = await release_ids(provider, "myapp")
    assert made[0] == first and len(made) == 2
    release = await provider.releases.get("myapp", made[1])
    assert release.env == {"MAIN_DB_URL": revealed}
    assert release.description == "link main-db"
    app = await provider.apps.get("myapp")
    assert (app.status, app.release) == ("running", release.id)  # promoted, and rolled out
    assert (await api.get("/services/main-db")).json()["apps"] == ["myapp"]


async def test_link_keeps_the_rest_of_the_environment(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path
) -> None:
    await api.post("/services", json={"type": "redis"})
    await deployed(provider, "myapp", tmp_path)
    await provider.releases.create("myapp", env={"GREETING": "hello"})
    await running(api, "redis")
    assert (await api.post("/services/redis/links", json={"app": "myapp"})).status_code == 200
    assert set(await provider.releases.environment("myapp")) == {"GREETING", "REDIS_URL"}


async def test_linking_an_undeployed_app_makes_a_release_for_its_first_deploy(
    api: httpx.AsyncClient, provider: Provider
) -> None:
    await provider.apps.create("fresh")
    await api.post("/services", json={"type": "redis"})
    await running(api, "redis")
    assert (await api.post("/services/redis/links", json={"app": "fresh"})).status_code == 200
    assert "REDIS_URL" in await provider.releases.environment("fresh")
    app = await provider.apps.get("fresh")
    assert (app.status, app.release) == ("created", "")  # nothing promoted


def watched_promote(provider: Provider, outcomes: list[str]) -> Callable[[str, str], object]:
    """The real ``releases.promote``, each call's outcome noted (``promoted`` or the error's class)."""
    promote = provider.releases.promote

    async def watched(app: str, release: str) -> App:
        try:
            promoted = await promote(app, release)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("promoted")
        return promoted

    return watched


async def test_link_waits_out_a_roll_out_in_progress(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.post("/services", json={"type": "redis"})
    await deployed(provider, "busy", tmp_path)
    await running(api, "redis")
    again = await provider.releases.create("busy", env={"AGAIN": "1"})
    await provider.releases.promote("busy", again.id)  # rolling out while the link promotes its release
    outcomes: list[str] = []
    monkeypatch.setattr(provider.releases, "promote", watched_promote(provider, outcomes))
    assert (await api.post("/services/redis/links", json={"app": "busy"})).status_code == 200
    assert outcomes[0] == Conflict.__name__ and outcomes[-1] == "promoted" and outcomes.count("promoted") == 1
    app = await provider.apps.get("busy")
    assert (app.status, app.release) == ("running", (await release_ids(provider, "busy"))[-1])
    assert set(await provider.releases.environment("busy")) == {"AGAIN", "REDIS_URL"}


async def test_a_failed_roll_out_is_an_error_naming_the_release(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path
) -> None:
    await api.post("/services", json={"type": "redis"})
    first = await deployed(provider, "broken", tmp_path, command="sh -c '[ -z \"$REDIS_URL\" ] && exec sleep 3600'")
    await running(api, "redis")
    response = await api.post("/services/redis/links", json={"app": "broken"})  # its web exits once linked
    assert response.status_code == 502, response.text
    release = (await release_ids(provider, "broken"))[-1]
    assert response.json()["error"].startswith(f"release {release} failed to roll out")
    assert f"; {first} is still serving" in response.json()["error"]


async def test_link_errors(api: httpx.AsyncClient, provider: Provider, tmp_path: Path) -> None:
    await api.post("/services", json={"type": "redis"})
    first = await deployed(provider, "myapp", tmp_path)
    await running(api, "redis")
    unknown_service = await api.post("/services/nope/links", json={"app": "myapp"})
    assert (unknown_service.status_code, unknown_service.json()) == (404, {"error": "no such service: nope"})
    unknown_app = await api.post("/services/redis/links", json={"app": "nope"})
    assert (unknown_app.status_code, unknown_app.json()) == (404, {"error": "no such app: nope"})
    assert await release_ids(provider, "myapp") == [first]
    assert (await api.post("/services/redis/links", json={"app": "myapp"})).status_code == 200
    twice = await api.post("/services/redis/links", json={"app": "myapp"})
    assert (twice.status_code, twice.json()) == (409, {"error": "service redis is already linked to myapp"})
    assert len(await release_ids(provider, "myapp")) == 2
    assert (await api.post("/services/redis/links", json={})).status_code == 400


async def test_delete_is_refused_while_linked_then_unlink_and_delete(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path
) -> None:
    await api.post("/services", json={"type": "mysql"})
    await deployed(provider, "myapp", tmp_path)
    kept = await provider.releases.create("myapp", env={"KEEP": "1"})
    await running(api, "mysql")
    await api.post("/services/mysql/links", json={"app": "myapp"})
    linked = await provider.apps.get("myapp")
    refused = await api.delete("/services/mysql")
    assert refused.status_code == 409
    assert refused.json() == {"error": "service mysql is linked to myapp: unlink it first"}
    unlinked = await api.delete("/services/mysql/links/myapp")
    assert unlinked.status_code == 200
    assert unlinked.json()["apps"] == []
    assert await provider.releases.environment("myapp") == {"KEEP": "1"}
    made = await release_ids(provider, "myapp")
    assert (await provider.releases.get("myapp", made[-1])).description == "unlink mysql"
    assert made[made.index(kept.id) + 1 :] == [linked.release, made[-1]]  # the link's, then the unlink's
    assert (await provider.apps.get("myapp")).release == made[-1]  # each promoted in turn
    again = await api.delete("/services/mysql/links/myapp")
    assert (again.status_code, again.json()) == (404, {"error": "service mysql is not linked to myapp"})
    assert (await api.delete("/services/mysql")).status_code == 204
    assert (await api.get("/services/mysql")).status_code == 404
    assert (await api.delete("/services/mysql")).status_code == 404


async def test_a_builds_manifest_resources_are_made_once_linked_and_unlinked_when_dropped(
    api: httpx.AsyncClient, provider: Provider, tmp_path: Path
) -> None:
    first = await deployed(provider, "myapp", tmp_path)
    first_answer = await api.post("/apps/myapp/resources", json={"resources": {"database": "postgres"}})
    assert first_answer.status_code == 200, first_answer.text
    url = first_answer.json()["set"]["DATABASE_URL"]
    assert url == f"postgres://app:{password(url)}@myapp-database:5432/app"
    assert first_answer.json() == {"set": {"DATABASE_URL": url}, "unset": []}
    again = await api.post("/apps/myapp/resources", json={"resources": {"database": "postgres"}})
    assert again.json() == {"set": {"DATABASE_URL": url}, "unset": []}
    assert [(r["name"], r["apps"]) for r in (await api.get("/services")).json()] == [("myapp-database", ["myapp"])]
    refused = await api.delete("/services/myapp-database/links/myapp")
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("service myapp-database is resources.database of myapp's manifest")
    dropped = await api.post("/apps/myapp/resources", json={"resources": {}})
    assert dropped.json() == {"set": {}, "unset": ["DATABASE_URL"]}
    assert [(r["name"], r["apps"]) for r in (await api.get("/services")).json()] == [("myapp-database", [])]
    assert await release_ids(provider, "myapp") == [first]  # the build makes the release, with these in it


async def test_a_manifest_resource_whose_service_name_is_too_long_is_400(
    api: httpx.AsyncClient, provider: Provider
) -> None:
    await provider.apps.create("an-app-with-a-long-name")
    response = await api.post("/apps/an-app-with-a-long-name/resources", json={"resources": {"database": "redis"}})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "resources.database: the service name an-app-with-a-long-name-database is too long (at most 30 "
        "characters, the app's name and the resource's together): give the resource a shorter name"
    )
    bad = await api.post("/apps/myapp/resources", json={"resources": {"Bad_Name": "redis"}})
    assert bad.status_code == 400
    assert (await api.get("/services")).json() == []
