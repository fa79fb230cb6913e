"""The conformance suite's provider fixture: every test runs over each provider against its real backend.

- ``local``: SQLite under a temporary data dir and the real Docker Engine;
- ``aws``: moto in server mode (DynamoDB, S3, ECS, CloudWatch Logs, EC2), reset before each test; one
  container instance is registered in moto as a test double, so that RunTask places tasks. Nothing ever runs
  on moto: where a test needs a running process or its output, the aws case says what it simulates.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.provider import PROVIDERS, Provider, load_provider
from tests.conftest import RACK_NAME
from tests.contract.moto_server import aws_environment, moto_endpoint, register_container_instance, reset

__all__ = ["moto_endpoint"]


def settings_for(name: str, data_dir: Path) -> RackSettings:
    return RackSettings(provider=name, data_dir=data_dir, name=RACK_NAME)


@pytest.fixture(params=sorted(PROVIDERS))
def provider_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(provider_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Brings up the provider's backend: the Docker Engine, or a freshly reset moto with AWS settings set."""
    if provider_name == "aws":
        endpoint = str(request.getfixturevalue("moto_endpoint"))
        reset(endpoint)
        for key, value in aws_environment(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
        monkeypatch.setenv("RACK_AWS_BUILD_IMAGE", BUILDER_IMAGE)
        return endpoint
    return str(request.getfixturevalue("docker_engine"))


@pytest.fixture
async def provider(provider_name: str, backend: str, tmp_path: Path) -> AsyncIterator[Provider]:
    async with load_provider(settings_for(provider_name, tmp_path)) as opened:
        if provider_name == "aws":
            await asyncio.to_thread(register_container_instance, RACK_NAME)
        async with running_workers(opened):
            yield opened
        if provider_name == "local":
            await asyncio.to_thread(remove_containers, [app.name for app in await opened.apps.list()])


def remove_containers(apps: list[str]) -> None:
    """The containers the test's apps left on the Engine (a test may end with its app deployed)."""
    for app in apps:
        labels = ("--filter", f"label=convox.rack={RACK_NAME}", "--filter", f"label=convox.app={app}")
        found = subprocess.run(
            ["docker", "ps", "-aq", *labels],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if found:
            subprocess.run(["docker", "rm", "-f", "-v", *found], capture_output=True, check=False)


@contextlib.asynccontextmanager
async def running_workers(provider: Provider) -> AsyncIterator[None]:
    """The provider's background work, as the rack's owner (the logs service) runs it, until the block ends."""
    ready = asyncio.Event()
    task = asyncio.create_task(provider.workers(ready.set))
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


BUILDER_IMAGE = "rack-test/builder:1"
"""The builder image the aws tests configure; on moto its task is placed but never runs (see play_builder)."""


@pytest.fixture
async def aws_provider(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Provider]:
    """The aws provider alone, on a freshly reset moto with one (test double) container instance."""
    reset(moto_endpoint)
    for key, value in aws_environment(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    monkeypatch.setenv("RACK_AWS_BUILD_IMAGE", BUILDER_IMAGE)
    async with load_provider(settings_for("aws", tmp_path)) as opened:
        await asyncio.to_thread(register_container_instance, RACK_NAME)
        yield opened
