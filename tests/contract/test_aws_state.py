"""State and objects on the aws provider (moto): conditional writes, transactions, encryption, sources."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.errors import BadRequest, NotFound, PayloadTooLarge
from shared.models import BuildOptions, Release
from shared.provider import Provider
from shared.provider.aws.builds import RESTARTED
from shared.provider.aws.releases import AwsReleases, env_key
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import builds_of, in_moto, manifest, play_builder
from tests.sources import chunks_of, stored_source


def releases_of(provider: Provider) -> AwsReleases:
    assert isinstance(provider.releases, AwsReleases)
    return provider.releases


async def test_a_release_made_on_a_stale_base_writes_nothing(aws_provider: Provider) -> None:
    await aws_provider.apps.create("stale")
    first = await aws_provider.releases.create("stale", env={"A": "1"})
    second = await aws_provider.releases.create("stale", env={"A": "2"})
    late = Release(id="RSTALESTALE", app="stale", env={"A": "lost"}, created=first.created)
    assert await releases_of(aws_provider).write(late, base_id=first.id) is False
    assert [r.id for r in await aws_provider.releases.list("stale")] == [second.id, first.id]
    assert await aws_provider.releases.environment("stale") == {"A": "2"}
    with pytest.raises(NotFound):
        await aws_provider.releases.get("stale", late.id)
    objects = await in_moto("s3", "list_objects_v2", Bucket=f"{RACK_NAME}-settings", Prefix="apps/stale/")
    assert env_key("stale", late.id) not in [o["Key"] for o in objects.get("Contents", [])]


async def test_concurrent_environment_changes_are_all_kept(aws_provider: Provider) -> None:
    await aws_provider.apps.create("envs")
    releases = releases_of(aws_provider)
    await asyncio.gather(*(releases.change_environment("envs", set={f"K{n}": str(n)}) for n in range(6)))
    await releases.change_environment("envs", unset=["K0"])
    assert await aws_provider.releases.environment("envs") == {f"K{n}": str(n) for n in range(1, 6)}
    assert len(await aws_provider.releases.list("envs")) == 7


async def test_the_environment_is_stored_encrypted_with_kms(aws_provider: Provider) -> None:
    await aws_provider.apps.create("secret")
    release = await aws_provider.releases.create("secret", env={"TOKEN": "t0ps3cret"})
    head = await in_moto("s3", "head_object", Bucket=f"{RACK_NAME}-settings", Key=env_key("secret", release.id))
    assert head["ServerSideEncryption"] == "aws:kms"
    item = await in_moto("dynamodb", "get_item", TableName=f"{RACK_NAME}-releases", Key={"id": {"S": release.id}})
    assert "t0ps3cret" not in str(item["Item"])


async def test_a_large_object_is_uploaded_in_parts_and_a_small_one_at_once(aws_provider: Provider) -> None:
    await aws_provider.apps.create("big")
    data = __import__("os").urandom(9 * 1024 * 1024)
    stored = await aws_provider.objects.store("big", "sources/big.tgz", chunks_of(data, 64 * 1024))
    assert (stored.size, stored.url) == (len(data), f"s3://{RACK_NAME}-settings/apps/big/objects/sources/big.tgz")
    head = await in_moto("s3", "head_object", Bucket=f"{RACK_NAME}-settings", Key="apps/big/objects/sources/big.tgz")
    assert "-" in head["ETag"] and head["ContentLength"] == len(data)
    fetched = b"".join([chunk async for chunk in await aws_provider.objects.fetch("big", "sources/big.tgz")])
    assert fetched == data
    await aws_provider.objects.store("big", "sources/small.tgz", chunks_of(b"small"))
    head = await in_moto("s3", "head_object", Bucket=f"{RACK_NAME}-settings", Key="apps/big/objects/sources/small.tgz")
    assert "-" not in head["ETag"]


async def test_an_object_past_its_cap_leaves_no_upload_behind(aws_provider: Provider) -> None:
    await aws_provider.apps.create("big")
    with pytest.raises(PayloadTooLarge):
        await aws_provider.objects.store("big", "sources/big.tgz", chunks_of(bytes(20 * 1024 * 1024)), 17 * 1024 * 1024)
    uploads = await in_moto("s3", "list_multipart_uploads", Bucket=f"{RACK_NAME}-settings")
    assert uploads.get("Uploads", []) == []  # the parts already sent were aborted
    assert not await aws_provider.objects.exists("big", "sources/big.tgz")


async def test_the_builder_task_reads_the_source_object(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("src")
    source = tmp_path / "src"
    source.mkdir()
    (source / "Dockerfile").write_text("FROM busybox\n")
    key = await stored_source(aws_provider.objects, "src", source)
    build = await aws_provider.builds.create("src", key, manifest(), BuildOptions())
    tasks = await in_moto("ecs", "list_tasks", cluster=RACK_NAME, startedBy="convox.build.src")
    described = await in_moto("ecs", "describe_tasks", cluster=RACK_NAME, tasks=tasks["taskArns"])
    definition = await in_moto(
        "ecs", "describe_task_definition", taskDefinition=described["tasks"][0]["taskDefinitionArn"]
    )
    env = {e["name"]: e["value"] for e in definition["taskDefinition"]["containerDefinitions"][0]["environment"]}
    assert (env["SOURCE_BUCKET"], env["SOURCE_KEY"], env["BUILD_ID"]) == (
        f"{RACK_NAME}-settings",
        f"apps/src/objects/{key}",
        build.id,
    )
    with pytest.raises(NotFound, match="no such object"):
        await aws_provider.builds.create("src", "sources/gone.tgz", manifest(), BuildOptions())


async def test_a_build_runs_as_a_builder_task_and_its_report_makes_a_release(
    aws_provider: Provider, tmp_path: Path
) -> None:
    await aws_provider.apps.create("built")
    done = await play_builder(aws_provider, "built", tmp_path)
    assert (done.status, done.release != "", done.ended is not None) == ("complete", True, True)
    release = await aws_provider.releases.get("built", done.release)
    assert release.build == done.id and "web" in release.manifest
    assert [b.id for b in await aws_provider.builds.list("built")] == [done.id]
    with pytest.raises(BadRequest):
        await builds_of(aws_provider).finish("built", done.id, {})
    with pytest.raises(NotFound):
        await aws_provider.builds.get("built", "BNOSUCHONEX")
    with pytest.raises(NotFound):
        await aws_provider.builds.get("missing", done.id)


async def test_a_build_whose_builder_task_stopped_without_reporting_is_failed_by_the_owner(
    aws_provider: Provider, tmp_path: Path
) -> None:
    builds = builds_of(aws_provider)
    await aws_provider.apps.create("orphan")
    started = []
    for name in ("dies", "lives", "forgotten"):
        source = tmp_path / name
        source.mkdir()
        key = await stored_source(aws_provider.objects, "orphan", source)
        started.append(await aws_provider.builds.create("orphan", key, manifest(), BuildOptions(description=name)))
    dies, lives, forgotten = started
    assert [b.status for b in started] == ["running"] * 3
    done = await play_builder(aws_provider, "orphan", tmp_path)  # reported: its task's stop changes nothing
    assert await builds.expire_once() == 0
    assert await builds.sweep() == 0
    for build in (dies, done):
        task = (await builds._item("orphan", build.id))["task"]
        await in_moto("ecs", "stop_task", cluster=RACK_NAME, task=task, reason="test: the builder died")
    assert await builds.expire_once() == 1
    failed = await aws_provider.builds.get("orphan", dies.id)
    assert failed.status == "failed" and failed.ended is not None
    assert failed.error.startswith(RESTARTED) and "test: the builder died" in failed.error, failed.error
    assert (await aws_provider.builds.get("orphan", lives.id)).status == "running"
    assert (await aws_provider.builds.get("orphan", done.id)).status == "complete"
    assert await builds.expire_once() == 0
    # a task ECS no longer knows (it stopped while no owner ran): the sweep at the owner's start fails it
    unknown = f"arn:aws:ecs:us-east-1:123456789012:task/{RACK_NAME}/{'f' * 32}"
    await builds._set(forgotten.id, task=unknown)
    assert await builds.sweep() == 1
    gone = await aws_provider.builds.get("orphan", forgotten.id)
    assert gone.status == "failed" and "no longer knows" in gone.error, gone.error
    assert (await aws_provider.builds.get("orphan", lives.id)).status == "running"
