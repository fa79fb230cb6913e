"""State and objects on the aws provider (moto): conditional writes, transactions, encryption, sources."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.errors import BadRequest, NotFound
from shared.models import BuildOptions, Release
from shared.provider import Provider
from shared.provider.aws.releases import AwsReleases, env_key
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import builds_of, in_moto, manifest, play_builder


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


async def test_a_large_source_is_uploaded_in_parts(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("big")
    source = tmp_path / "src"
    source.mkdir()
    (source / "blob").write_bytes(__import__("os").urandom(9 * 1024 * 1024))
    build = await aws_provider.builds.create("big", source, manifest(), BuildOptions())
    key = f"apps/big/builds/{build.id}/source.tgz"
    head = await in_moto("s3", "head_object", Bucket=f"{RACK_NAME}-settings", Key=key)
    assert "-" in head["ETag"] and head["ContentLength"] > 8 * 1024 * 1024
    assert not source.exists()
    small = tmp_path / "small"
    small.mkdir()
    (small / "Dockerfile").write_text("FROM busybox\n")
    other = await aws_provider.builds.create("big", small, manifest(), BuildOptions())
    head = await in_moto(
        "s3", "head_object", Bucket=f"{RACK_NAME}-settings", Key=f"apps/big/builds/{other.id}/source.tgz"
    )
    assert "-" not in head["ETag"]


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


async def test_a_build_whose_builder_is_gone_is_recovered_as_failed(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("orphan")
    source = tmp_path / "src"
    source.mkdir()
    build = await aws_provider.builds.create("orphan", source, manifest(), BuildOptions())
    assert build.status == "running"
    assert await aws_provider.builds.recover() == 0
    tasks = await in_moto(
        "ecs", "list_tasks", cluster=RACK_NAME, startedBy="convox.build.orphan", desiredStatus="RUNNING"
    )
    await in_moto("ecs", "stop_task", cluster=RACK_NAME, task=tasks["taskArns"][0], reason="test: the builder died")
    assert await aws_provider.builds.recover() == 1
    failed = await aws_provider.builds.get("orphan", build.id)
    assert (failed.status, failed.error) == ("failed", "the builder stopped before the build ended")
