"""Process types' volumes on the real Docker Engine, at the app's deletion."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest

from shared.manifest import Volume
from shared.provider.local.docker import LABEL_RACK, Docker
from shared.provider.local.volumes import Volumes
from tests.conftest import RACK_NAME, remove_labelled_containers

RACK = f"{RACK_NAME}-volumes"


def volumes_of(app: str) -> list[str]:
    listed = subprocess.run(
        [
            "docker",
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=convox.app={app}",
            "--filter",
            f"label={LABEL_RACK}={RACK}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


@pytest.fixture
async def docker() -> AsyncIterator[Docker]:
    docker = Docker(None)
    yield docker
    await docker.close()
    await asyncio.to_thread(remove_labelled_containers, RACK)


async def test_an_apps_volume_still_mounted_by_a_late_process_goes_with_the_app(
    docker: Docker, busybox_image: str
) -> None:
    volumes = Volumes(docker, RACK)
    mounts = await volumes.mounts("late", "web", [Volume(name="data", path="/data")])
    # a process that began after the deletion removed the app's containers (as a timer's run that started
    # in that moment would): it is not found by the app's labels, and it holds the volume
    late = await docker.create(
        {
            "Image": busybox_image,
            "Cmd": ["sleep", "3333"],
            "Labels": {LABEL_RACK: RACK},
            "HostConfig": {"Mounts": mounts},
        }
    )
    await docker.client.containers.container(late).start()
    assert await docker.volume_users(mounts[0]["Source"]) == [late]
    await volumes.forget("late")
    assert await asyncio.to_thread(volumes_of, "late") == []
    assert await docker.volume_users(mounts[0]["Source"]) == []
