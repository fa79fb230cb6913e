"""How a container's runs ended, from the real Docker Engine's events: what a health check reports when a
restart policy has already started the process again (its state then shows the new run, exit code 0)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from shared.provider.local.docker import Docker
from tests.conftest import RACK_NAME, remove_labelled_containers

RACK = RACK_NAME + "-exits"


def state(container: str) -> str:
    template = "{{.RestartCount}} {{.State.Running}} {{.State.Restarting}}"
    argv = ["docker", "inspect", "-f", template, container]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def crash_looping(busybox_image: str) -> Iterator[tuple[str, float]]:
    """A container that exits with code 3 after a moment, and is restarted once by its policy."""
    began = time.time()
    argv = ["docker", "run", "-d", "--label", f"convox.rack={RACK}", "--restart", "on-failure:1"]
    container = subprocess.run(
        [*argv, busybox_image, "sh", "-c", "sleep 0.2; exit 3"], capture_output=True, text=True, check=True
    ).stdout.strip()
    deadline = time.monotonic() + 30
    while state(container) != "1 false false":  # restarted once, and both runs ended
        assert time.monotonic() < deadline, state(container)
        time.sleep(0.05)
    yield container, began
    remove_labelled_containers(RACK)


async def test_the_exit_codes_of_a_containers_runs_come_from_its_die_events(
    crash_looping: tuple[str, float],
) -> None:
    container, began = crash_looping
    docker = Docker(None)
    try:
        assert await docker.exit_codes(container, began - 1.0) == [3, 3]
        assert await docker.exit_codes(container, time.time() + 1.0) == []  # none from a later time
    finally:
        await docker.close()
