"""The rack's parameters through the provider contract on a rack started against its stack (what
`PUT /system/params` does on aws): the rack stack is updated. Simulated: AWS itself (moto; its CloudFormation
completes an update at once, so "updating" is never seen here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest
from shared.provider import load_provider
from shared.provider.aws.rackstack import from_stack
from tests.aws.test_install import convox
from tests.moto_server import MotoServer


async def change_params(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rack = await from_stack("convox")
    for key, value in rack.environment.items():
        monkeypatch.setenv(key, value)
    async with load_provider(RackSettings(provider="aws", data_dir=data_dir, name="convox")) as provider:
        before = await provider.params.get()
        assert (before["InstanceCount"], before["InstanceType"]) == ("2", "t3.small")
        after = await provider.params.set({"InstanceType": "t3.medium", "InstanceCount": "4"})
        assert (after["InstanceType"], after["InstanceCount"]) == ("t3.medium", "4")
        assert after["Ami"] == before["Ami"]  # what was not named keeps its value
        assert (await provider.params.get())["InstanceType"] == "t3.medium"
        restored = await provider.params.set({"InstanceType": ""})  # empty: the template's default
        assert restored["InstanceType"] == "t3.small"
        with pytest.raises(BadRequest, match="unknown parameter InstanceCounts"):
            await provider.params.set({"InstanceCounts": "3"})
        with pytest.raises(BadRequest, match="set by the installer"):
            await provider.params.set({"PasswordParameter": "/elsewhere"})
        assert (await provider.params.get())["InstanceCount"] == "4"  # a refused change changed nothing
        assert (await provider.system.get()).status == "running"


def test_params_set_through_the_rack_updates_its_stack(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = convox(aws, tmp_path / "convox", "rack", "install", "aws", "InstanceCount=2")
    assert done.returncode == 0, done.stderr
    asyncio.run(change_params(tmp_path / "data", monkeypatch))
