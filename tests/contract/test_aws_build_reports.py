"""``BuildReportsAPI.report``: only the aws provider has it (its builds run in a builder task outside the rack;
the local provider's run in the rack itself, so it has no such API, which the first test checks over both).

Simulated on aws: the builder task. moto places it and runs nothing; the test reads the build's token from
the task's environment overrides, as the builder would (tests/aws/builder_double.py ``wait_for_task``), and
reports as the builder does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.errors import BadRequest, NotFound, Unauthorized
from shared.models import Build, BuildOptions, BuildReport
from shared.provider import Provider
from shared.provider.contract import BuildReportsAPI
from tests.aws.builder_double import wait_for_task
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import ECR, manifest
from tests.sources import stored_source


async def test_only_a_provider_whose_builds_run_outside_the_rack_takes_reports(
    provider: Provider, provider_name: str
) -> None:
    assert isinstance(provider.builds, BuildReportsAPI) == (provider_name == "aws")


async def started(provider: Provider, app: str, tmp_path: Path, tag: str) -> tuple[Build, str]:
    """A running build of :func:`manifest` and the token its builder task was given."""
    source = tmp_path / f"source-{tag}"
    source.mkdir()
    (source / "Dockerfile").write_text("FROM busybox\n")
    key = await stored_source(provider.objects, app, source)
    build = await provider.builds.create(app, key, manifest(), BuildOptions(description=tag))
    task = await asyncio.to_thread(wait_for_task, RACK_NAME, app)
    assert task.env["BUILD_ID"] == build.id
    return build, task.env["BUILD_TOKEN"]


def reports(provider: Provider) -> BuildReportsAPI:
    assert isinstance(provider.builds, BuildReportsAPI)
    return provider.builds


def images_of(app: str, build: Build) -> dict[str, str]:
    return {name: f"{ECR}/{RACK_NAME}/{app}:{name}.{build.id.lower()}" for name in ("web", "worker")}


async def test_a_report_with_the_builds_token_completes_it_with_a_release(
    aws_provider: Provider, tmp_path: Path
) -> None:
    await aws_provider.apps.create("reported")
    build, token = await started(aws_provider, "reported", tmp_path, "1")
    assert (await aws_provider.builds.get("reported", build.id)).status == "running"
    done = await reports(aws_provider).report(
        "reported", build.id, token, BuildReport(images=images_of("reported", build))
    )
    assert (done.status, done.error) == ("complete", "")
    assert (await aws_provider.releases.get("reported", done.release)).build == build.id
    with pytest.raises(BadRequest, match="not running"):  # a token reports once
        await reports(aws_provider).report(
            "reported", build.id, token, BuildReport(images=images_of("reported", build))
        )


async def test_a_report_of_an_error_fails_the_build_without_a_release(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("broken")
    build, token = await started(aws_provider, "broken", tmp_path, "1")
    failed = await reports(aws_provider).report("broken", build.id, token, BuildReport(error="web: exit code 1"))
    assert (failed.status, failed.error, failed.release) == ("failed", "web: exit code 1", "")
    assert await aws_provider.releases.list("broken") == []


async def test_report_errors(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("refused")
    first, token = await started(aws_provider, "refused", tmp_path, "1")
    images = BuildReport(images=images_of("refused", first))
    api = reports(aws_provider)
    with pytest.raises(Unauthorized):
        await api.report("refused", first.id, "not-the-token", images)
    with pytest.raises(Unauthorized):
        await api.report("refused", first.id, "", images)
    await aws_provider.apps.create("other")
    second, other_token = await started(aws_provider, "other", tmp_path, "2")
    with pytest.raises(Unauthorized):  # the token of another build is not this one's
        await api.report("refused", first.id, other_token, images)
    with pytest.raises(BadRequest, match="missing worker"):
        await api.report("refused", first.id, token, BuildReport(images={"web": images.images["web"]}))
    with pytest.raises(BadRequest, match="not built cache"):
        await api.report("refused", first.id, token, BuildReport(images={**images.images, "cache": "busybox"}))
    with pytest.raises(NotFound):
        await api.report("refused", "BNOSUCHONEX", token, images)
    with pytest.raises(NotFound):
        await api.report("missing", first.id, token, images)
    with pytest.raises(NotFound):  # a build is only found through its own app
        await api.report("other", first.id, token, images)
    for app, build in (("refused", first), ("other", second)):  # nothing refused changed either build
        assert (await aws_provider.builds.get(app, build.id)).status == "running"
