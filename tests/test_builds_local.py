"""The local provider's builds against SQLite and the real Docker Engine: several process types (built and
prebuilt), build args and Dockerfiles in subdirectories, live log following, records, recovery."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import NotFound
from shared.manifest import parse_manifest
from shared.models import BuildOptions
from shared.provider.local import LocalProvider
from shared.provider.local.builds import RESTARTED, LocalBuilds
from shared.provider.local.images import image_name
from tests.conftest import RACK_NAME
from tests.sources import stored_source
from tests.test_runners import HOLDER

ROOT = Path(__file__).resolve().parent.parent

MANIFEST = """services:
  web:
    build: .
    port: 3000
  worker:
    build:
      path: worker
      manifest: docker/Dockerfile.worker
      args:
        GREETING: hello-arg
  cache:
    image: rack-test/busybox:1
"""


@pytest.fixture
async def provider(tmp_path: Path, busybox_image: str) -> AsyncIterator[LocalProvider]:
    async with LocalProvider(RackSettings(data_dir=tmp_path / "data", name=RACK_NAME)) as opened:
        await opened.apps.create("myapp")
        await opened.apps.create("other")
        yield opened
    found = (
        await asyncio.to_thread(docker, "images", "-q", "--filter", f"reference=convox/{RACK_NAME}-myapp-*")
    ).stdout
    if found.split():
        await asyncio.to_thread(docker, "rmi", "-f", *set(found.split()))


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


def source(tmp_path: Path, web_dockerfile: str) -> Path:
    root = tmp_path / "context"
    (root / "worker" / "docker").mkdir(parents=True)
    (root / "Dockerfile").write_text(web_dockerfile)
    (root / "convox.yml").write_text(MANIFEST)
    (root / "worker" / "docker" / "Dockerfile.worker").write_text(
        'FROM rack-test/busybox:1\nARG GREETING\nRUN echo "worker says $GREETING"\nCOPY job.sh /job.sh\n'
    )
    (root / "worker" / "job.sh").write_text("echo job\n")
    return root


async def finished(builds: LocalBuilds, app: str, build: str) -> str:
    for _ in range(600):
        record = await builds.get(app, build)
        if record.status in ("complete", "failed"):
            return record.status
        await asyncio.sleep(0.1)
    raise AssertionError("the build did not finish")


async def test_every_built_service_gets_its_image_and_the_build_a_release(
    provider: LocalProvider, tmp_path: Path
) -> None:
    context = source(tmp_path, "FROM rack-test/busybox:1\nRUN echo web-step\n")
    manifest = parse_manifest(MANIFEST, "convox.yml")
    key = await stored_source(provider.objects, "myapp", context)
    build = await provider.builds.create("myapp", key, manifest, BuildOptions(description="two"))
    assert build.status in ("created", "running")
    assert await finished(provider.builds, "myapp", build.id) == "complete"
    record = await provider.builds.get("myapp", build.id)
    release = await provider.releases.get("myapp", record.release)
    assert (release.build, release.description) == (build.id, "two")
    log = b"".join([chunk async for chunk in provider.builds.logs("myapp", build.id, follow=False)]).decode()
    assert "web-step" in log and "worker says hello-arg" in log
    assert "Service cache runs image rack-test/busybox:1: nothing to build" in log
    for service in ("web", "worker"):
        tag = image_name(RACK_NAME, "myapp", service, build.id)
        assert (await asyncio.to_thread(docker, "image", "inspect", tag)).returncode == 0
    cache = image_name(RACK_NAME, "myapp", "cache", build.id)
    assert (await asyncio.to_thread(docker, "image", "inspect", cache)).returncode != 0
    assert not (tmp_path / "data" / "builds" / build.id).exists()  # the work dir is gone, the log stays
    assert not await provider.objects.exists("myapp", key)  # the source object was the build's to delete
    assert (tmp_path / "data" / "builds" / f"{build.id}.log").exists()


async def test_deleting_an_app_removes_its_images_and_build_logs(provider: LocalProvider, tmp_path: Path) -> None:
    manifest = parse_manifest(MANIFEST, "convox.yml")
    built = []
    for app in ("myapp", "other"):
        key = await stored_source(provider.objects, app, source(tmp_path / app, "FROM rack-test/busybox:1\n"))
        build = await provider.builds.create(app, key, manifest, BuildOptions())
        assert await finished(provider.builds, app, build.id) == "complete"
        built.append(build.id)
    mine, others = built
    tags = {image_name(RACK_NAME, "myapp", service, mine) for service in ("web", "worker")}
    await provider.apps.delete("myapp")
    for tag in tags:
        assert (await asyncio.to_thread(docker, "image", "inspect", tag)).returncode != 0
    assert not (tmp_path / "data" / "builds" / f"{mine}.log").exists()
    kept = image_name(RACK_NAME, "other", "web", others)  # another app's builds are left alone
    assert (await asyncio.to_thread(docker, "image", "inspect", kept)).returncode == 0
    assert (tmp_path / "data" / "builds" / f"{others}.log").exists()
    assert (await asyncio.to_thread(docker, "image", "inspect", "rack-test/busybox:1")).returncode == 0
    await provider.apps.delete("other")


async def test_following_yields_output_while_the_build_runs(provider: LocalProvider, tmp_path: Path) -> None:
    context = source(tmp_path, "FROM rack-test/busybox:1\nRUN echo first-line && sleep 2 && echo second-line\n")
    manifest = parse_manifest(MANIFEST, "convox.yml")
    build = await provider.builds.create(
        "myapp", await stored_source(provider.objects, "myapp", context), manifest, BuildOptions()
    )
    seen = b""
    status_when_first_seen = ""
    async for chunk in provider.builds.logs("myapp", build.id, follow=True):
        seen += chunk
        if b"first-line" in seen and not status_when_first_seen:
            status_when_first_seen = (await provider.builds.get("myapp", build.id)).status
    assert status_when_first_seen == "running"
    assert b"second-line" in seen and b"complete: release R" in seen
    assert (await provider.builds.get("myapp", build.id)).status == "complete"


async def test_builds_are_found_through_their_own_app_only(provider: LocalProvider, tmp_path: Path) -> None:
    context = source(tmp_path, "FROM rack-test/busybox:1\nRUN false\n")
    key = await stored_source(provider.objects, "myapp", context)
    build = await provider.builds.create("myapp", key, parse_manifest(MANIFEST, "convox.yml"), BuildOptions())
    assert await finished(provider.builds, "myapp", build.id) == "failed"
    record = await provider.builds.get("myapp", build.id)
    assert record.error.startswith("web: ") and record.release == "" and record.ended
    assert [b.id for b in await provider.builds.list("myapp")] == [build.id]
    assert await provider.builds.list("other") == []
    with pytest.raises(NotFound, match="no such build"):
        await provider.builds.get("other", build.id)
    with pytest.raises(NotFound, match="no such app"):
        await provider.builds.get("nope", build.id)
    with pytest.raises(NotFound, match="no such app"):
        await provider.builds.create("nope", key, parse_manifest(MANIFEST, "convox.yml"), BuildOptions())
    with pytest.raises(NotFound, match="no such object"):
        await provider.builds.create(
            "myapp", "sources/gone.tgz", parse_manifest(MANIFEST, "convox.yml"), BuildOptions()
        )


async def test_the_owner_fails_the_unfinished_builds_whose_runner_died_and_only_those(
    provider: LocalProvider, tmp_path: Path
) -> None:
    runners = tmp_path / "data" / "runners"
    holder = await asyncio.create_subprocess_exec(  # a builds service of its own: a process holding a runner
        sys.executable,
        "-c",
        HOLDER,
        str(runners),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None
        theirs = (await holder.stdout.readline()).decode().strip()
        ours = provider.runner.hold()
        rows = [  # id, status, release, runner
            ("BRUNNINGXXX", "running", "", theirs),  # a builds service that is alive, then killed
            ("BOURSXXXXXX", "running", "", ours),  # this process's: alive
            ("BCREATEDXXX", "created", "", ""),  # from before runners: dead
            ("BNORELEASEX", "complete", "", "0123456789abcdef"),  # cut off before its release
            ("BDONEXXXXXX", "complete", "RXXXXXXXXXX", "fedcba9876543210"),  # ended: left alone
        ]
        for build, status, release, runner in rows:
            await provider.state.execute(
                "INSERT INTO builds (id, app, status, release, runner, created) VALUES (?, 'myapp', ?, ?, ?, ?)",
                (build, status, release, runner, "2026-01-01"),
            )
        (tmp_path / "data" / "builds" / "BRUNNINGXXX" / "source").mkdir(parents=True)
        assert await provider.builds.expire_once() == 2
        statuses = {b.id: b.status for b in await provider.builds.list("myapp")}
        assert statuses == {
            "BRUNNINGXXX": "running",
            "BOURSXXXXXX": "running",
            "BCREATEDXXX": "failed",
            "BNORELEASEX": "failed",
            "BDONEXXXXXX": "complete",
        }
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), 10)
        assert await provider.builds.expire_once() == 1
        for build in ("BRUNNINGXXX", "BCREATEDXXX", "BNORELEASEX"):
            record = await provider.builds.get("myapp", build)
            assert (record.status, record.error, record.release) == ("failed", RESTARTED, "")
            assert record.ended is not None
        assert (await provider.builds.get("myapp", "BOURSXXXXXX")).status == "running"
        assert not (tmp_path / "data" / "builds" / "BRUNNINGXXX").exists()
        log = b"".join([c async for c in provider.builds.logs("myapp", "BRUNNINGXXX", follow=True)])
        assert log.strip() == f"Build failed: {RESTARTED}".encode()
        assert await provider.builds.expire_once() == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    shutil.rmtree(tmp_path / "data" / "builds", ignore_errors=True)
