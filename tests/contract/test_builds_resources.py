"""The resource hook of builds (``BuildsAPI.link_resources``) over every provider: what the hook returns goes
into the release a complete build makes; a hook that raises fails the build and makes no release.

- ``local``: a real build on the real Docker Engine of a manifest whose one process type runs a prebuilt
  image (nothing to build, so the build is quick);
- ``aws``: simulated, the builder task (tests/contract/aws_helpers.py ``play_builder`` reports its images,
  as the builder would, to the provider's ``finish``, which runs the hook).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.errors import Conflict
from shared.manifest import Manifest, ResourceSpec, Service
from shared.models import Build, BuildOptions, ResourceEnv
from shared.provider import Provider
from tests.contract.aws_helpers import play_builder
from tests.sources import stored_source

MANIFEST = Manifest(
    services={"web": Service(name="web", image="rack-test/busybox:1", command="sleep 3600", resources=["cache"])},
    resources={"cache": ResourceSpec(type="redis")},
)


class ResourceHookDouble:
    """Test double of the builds service's provisioner: records each call and answers ``env``, or raises."""

    def __init__(self, env: ResourceEnv, error: Exception | None = None) -> None:
        self.env = env
        self.error = error
        self.calls: list[tuple[str, Manifest]] = []

    async def __call__(self, app: str, manifest: Manifest) -> ResourceEnv:
        self.calls.append((app, manifest))
        if self.error is not None:
            raise self.error
        return self.env


async def built(
    provider: Provider, provider_name: str, app: str, tmp_path: Path, manifest: Manifest = MANIFEST
) -> Build:
    """A build of ``manifest`` (its process types run prebuilt images), once it has ended."""
    if provider_name == "aws":
        return await play_builder(provider, app, tmp_path, tag=app, built=manifest)
    source = tmp_path / f"source-{app}"
    source.mkdir()
    (source / "convox.yml").write_text("services:\n  web:\n    image: rack-test/busybox:1\n")
    key = await stored_source(provider.objects, app, source)
    build = await provider.builds.create(app, key, manifest, BuildOptions(description=app))
    async with asyncio.timeout(60):
        while build.status not in ("complete", "failed"):
            await asyncio.sleep(0.05)
            build = await provider.builds.get(app, build.id)
    return build


async def test_what_the_linked_hook_returns_goes_into_the_builds_release(
    provider: Provider, provider_name: str, tmp_path: Path
) -> None:
    await provider.apps.create("hooked")
    await provider.releases.change_env("hooked", set={"OLD_URL": "redis://gone", "KEPT": "1"})
    hook = ResourceHookDouble(ResourceEnv(set={"CACHE_URL": "redis://:secret@cache:6379/0"}, unset=["OLD_URL"]))
    provider.builds.link_resources(hook)
    build = await built(provider, provider_name, "hooked", tmp_path)
    assert (build.status, build.error) == ("complete", "")
    assert [(app, sorted(manifest.resources)) for app, manifest in hook.calls] == [("hooked", ["cache"])]
    release = await provider.releases.get("hooked", build.release)
    assert release.build == build.id
    assert release.env == {"KEPT": "1", "CACHE_URL": "redis://:secret@cache:6379/0"}


async def test_a_hook_that_raises_fails_the_build_and_makes_no_release(
    provider: Provider, provider_name: str, tmp_path: Path
) -> None:
    await provider.apps.create("unhooked")
    before = await provider.releases.change_env("unhooked", set={"KEPT": "1"})
    hook = ResourceHookDouble(ResourceEnv(), Conflict("service unhooked-cache is memcached, not redis"))
    provider.builds.link_resources(hook)
    build = await built(provider, provider_name, "unhooked", tmp_path)
    assert build.status == "failed" and "unhooked-cache is memcached, not redis" in build.error
    assert build.release == "" and len(hook.calls) == 1
    assert [r.id for r in await provider.releases.list("unhooked")] == [before.id]
