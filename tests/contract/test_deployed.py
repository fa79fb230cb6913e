"""A deployed app over every provider: its formation, scale, restart, cancel and timers.

- ``local``: a real build on the real Docker Engine (busybox), rolled out as containers;
- ``aws``: moto. Simulated: the builder task (``play_builder`` reports the images it would have pushed) and
  the ECS scheduler (moto's services never get tasks), so on aws the formation is the services' records.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.errors import Conflict, NotFound
from shared.manifest import BuildSpec, Manifest, Service, Timer
from shared.models import BuildOptions, FormationUpdate
from shared.provider import Provider
from tests.contract.aws_helpers import play_builder
from tests.sources import stored_source

MANIFEST = Manifest(
    services={
        "web": Service(name="web", build=BuildSpec(), port=3000, command="httpd -f -p 3000 -h /"),
        "worker": Service(name="worker", build=BuildSpec(), command="sleep 3600"),
    },
    timers={"nightly": Timer(name="nightly", schedule="0 3 * * *", command="echo nightly", service="worker")},
)


async def deployed(provider: Provider, app: str, tmp_path: Path) -> str:
    """``app`` built from a busybox Dockerfile and its release promoted; returns the release."""
    await provider.apps.create(app)
    if provider.name == "aws":
        build = await play_builder(provider, app, tmp_path, built=MANIFEST)
    else:
        source = tmp_path / "source"
        source.mkdir()
        (source / "Dockerfile").write_text("FROM rack-test/busybox:1\n")
        key = await stored_source(provider.objects, app, source)
        build = await provider.builds.create(app, key, MANIFEST, BuildOptions(description="contract"))
        async with asyncio.timeout(120):
            while build.status not in ("complete", "failed"):
                await asyncio.sleep(0.1)
                build = await provider.builds.get(app, build.id)
        assert build.status == "complete", build
    await provider.releases.promote(app, build.release)
    settled = await provider.releases.settled(app, within=120)  # a roll-out goes on in the background
    assert (settled.status, settled.release) == ("running", build.release), settled
    return build.release


async def test_a_deployed_app_has_a_formation_per_process_type(
    provider: Provider, tmp_path: Path, busybox_image: str
) -> None:
    release = await deployed(provider, "formed", tmp_path)
    app = await provider.apps.get("formed")
    assert (app.status, app.release) == ("running", release)
    formation = {f.name: f for f in await provider.formation.get("formed")}
    assert sorted(formation) == ["web", "worker"]
    web = formation["web"]
    assert web.count == 1 and len(web.ports) == 1  # public: BALANCER:CONTAINER (local: a host port; aws: 443)
    balancer_port, container_port = web.ports[0].split(":")
    assert container_port == "3000" and 0 < int(balancer_port) < 65536
    assert web.balancer and web.endpoints == [web.balancer]
    assert (await provider.apps.get("formed")).balancer == web.balancer
    assert (formation["worker"].count, formation["worker"].ports) == (1, [])


async def test_scale_sets_the_count_and_refuses_what_is_not_there(
    provider: Provider, tmp_path: Path, busybox_image: str
) -> None:
    await deployed(provider, "scaled", tmp_path)
    scaled = await provider.formation.scale("scaled", "worker", FormationUpdate(count=2))
    assert (scaled.name, scaled.count) == ("worker", 2)
    assert {f.name: f.count for f in await provider.formation.get("scaled")} == {"web": 1, "worker": 2}
    with pytest.raises(NotFound):
        await provider.formation.scale("scaled", "nosuchtype", FormationUpdate(count=2))
    assert {f.name: f.count for f in await provider.formation.get("scaled")} == {"web": 1, "worker": 2}


async def test_restart_and_cancel_of_a_deployed_app(provider: Provider, tmp_path: Path, busybox_image: str) -> None:
    await deployed(provider, "restarted", tmp_path)
    with pytest.raises(Conflict):
        await provider.formation.cancel("restarted")  # nothing is rolling out
    restarted = await provider.formation.restart("restarted", "worker")
    assert [f.name for f in restarted] == ["web", "worker"]  # the app's formation after the restart
    with pytest.raises(NotFound):
        await provider.formation.restart("restarted", "nosuchtype")
    assert (await provider.apps.get("restarted")).status == "running"


async def test_the_timers_of_the_active_release_are_listed(
    provider: Provider, tmp_path: Path, busybox_image: str
) -> None:
    await deployed(provider, "timed", tmp_path)
    timers = await provider.timers.list("timed")
    assert [(t.name, t.schedule, t.service) for t in timers] == [("nightly", "0 3 * * *", "worker")]
    assert timers[0].next_run is not None and timers[0].last_run is None

