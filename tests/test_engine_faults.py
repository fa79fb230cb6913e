"""A Docker Engine that is down or hangs (simulated by DockerProxyDouble, a socket proxy in front of the real
engine): the rack starts anyway, answers what needs no engine, says the engine is unreachable (503) where it
does, and recovers when the engine is back; a hung engine never holds a request or a roll-out for good."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RACK_NAME, Cli, RunningRack, remove_labelled_containers, start_rack, stop_balancer, stop_rack
from tests.docker_proxy_double import DockerProxyDouble
from tests.test_deploy import SAMPLE, deploy

TIMEOUT = 3  # RACK_LOCAL_DOCKER_TIMEOUT for these racks


@pytest.fixture
def engine(tmp_path: Path, docker_engine: str) -> Iterator[DockerProxyDouble]:
    with DockerProxyDouble(tmp_path / "engine.sock", mode="refuse") as proxy:
        yield proxy


@pytest.fixture
def faulty_rack(tmp_path: Path, engine: DockerProxyDouble) -> Iterator[RunningRack]:
    """A rack whose engine is the proxy double, started while the engine is down."""
    name = RACK_NAME + "-faults"
    data = tmp_path / "data"
    env = {"DOCKER_HOST": engine.url, "RACK_LOCAL_DOCKER_TIMEOUT": str(TIMEOUT)}
    running = start_rack(data, name, env=env)
    try:
        yield running
    finally:
        stop_rack(running)
        stop_balancer(data)
        remove_labelled_containers(name)


def until(check: Cli, *args: str, within: float = 30) -> str:
    """Run ``convox ARGS`` until it succeeds; its output."""
    deadline = time.monotonic() + within
    while True:
        result = check(*args)
        if result.returncode == 0:
            return result.stdout
        assert time.monotonic() < deadline, f"convox {' '.join(args)} still fails: {result.stderr}"
        time.sleep(0.2)


def test_a_rack_started_while_the_engine_is_down_answers_and_recovers_when_it_returns(
    faulty_rack: RunningRack, engine: DockerProxyDouble, tmp_path: Path
) -> None:
    user = Cli(faulty_rack.env(tmp_path / "cfg"), tmp_path)
    assert user("apps", "create", "offline", check=True).returncode == 0
    assert "offline" in user("apps", check=True).stdout
    assert user("api", "get", "/apps/offline/builds", check=True).stdout.strip() == "[]"
    assert user("api", "get", "/apps/offline/releases", check=True).returncode == 0
    assert user("logs", "--app", "offline", "--no-follow", check=True).returncode == 0
    down = user("ps", "--app", "offline")
    assert down.returncode != 0
    assert "ERROR: docker engine unreachable" in down.stderr
    engine.mode = "pass"
    until(user, "ps", "--app", "offline")


def test_a_hung_engine_gives_503_in_time_and_holds_no_roll_out(
    faulty_rack: RunningRack, engine: DockerProxyDouble, busybox_image: str, tmp_path: Path
) -> None:
    engine.mode = "pass"
    user = Cli(faulty_rack.env(tmp_path / "cfg"), tmp_path)
    source = tmp_path / "web"
    shutil.copytree(SAMPLE, source)
    user("apps", "create", "hung", check=True)
    assert deploy(user, "hung", source).returncode == 0
    engine.mode = "stall"
    began = time.monotonic()
    stalled = user("ps", "--app", "hung")
    assert stalled.returncode != 0
    assert "ERROR: docker engine unreachable: it did not answer" in stalled.stderr
    scaled = user("scale", "web", "--count", "2", "--app", "hung")
    assert scaled.returncode != 0
    assert "ERROR: docker engine unreachable" in scaled.stderr
    assert time.monotonic() - began < 6 * TIMEOUT + 20
    engine.mode = "pass"
    until(user, "ps", "--app", "hung")
    assert user("scale", "web", "--count", "2", "--app", "hung", check=True).returncode == 0  # no lock left held
