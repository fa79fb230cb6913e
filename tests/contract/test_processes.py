"""Processes over every provider (moved from tests/test_provider_contract.py). On aws (moto) a process is an
ECS task record placed on a test-double container instance: nothing runs, so these check the records."""

from __future__ import annotations

import pytest

from shared.errors import NotFound
from shared.models import ProcessRunOptions
from shared.provider import Provider


async def test_a_process_runs_lists_and_stops(provider: Provider, busybox_image: str) -> None:
    await provider.apps.create("smoke")
    process = await provider.processes.run(
        "smoke", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "300"])
    )
    assert len(process.id) == 12
    assert (process.app, process.name) == ("smoke", "web")
    assert [p.id for p in await provider.processes.list("smoke")] == [process.id]
    assert (await provider.processes.get("smoke", process.id)).command == "sleep 300"
    await provider.processes.stop("smoke", process.id)
    assert await provider.processes.list("smoke") == []
    with pytest.raises(NotFound):
        await provider.processes.get("smoke", process.id)


async def test_a_process_is_only_found_through_its_own_app(provider: Provider, busybox_image: str) -> None:
    await provider.apps.create("mine")
    await provider.apps.create("theirs")
    process = await provider.processes.run(
        "theirs", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "300"])
    )
    try:
        with pytest.raises(NotFound):
            await provider.processes.get("mine", process.id)
        with pytest.raises(NotFound):
            await provider.processes.stop("mine", process.id)
        assert await provider.processes.list("mine") == []
    finally:
        await provider.apps.delete("theirs")
    with pytest.raises(NotFound):
        await provider.processes.get("theirs", process.id)


async def test_deleting_an_app_removes_its_processes(provider: Provider, busybox_image: str) -> None:
    await provider.apps.create("doomed")
    process = await provider.processes.run(
        "doomed", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "300"])
    )
    await provider.apps.delete("doomed")
    await provider.apps.create("doomed")
    with pytest.raises(NotFound):
        await provider.processes.get("doomed", process.id)


async def test_process_errors(provider: Provider) -> None:
    with pytest.raises(NotFound):
        await provider.processes.list("missing")
    await provider.apps.create("empty")
    with pytest.raises(NotFound):
        await provider.processes.get("empty", "0123456789ab")
    with pytest.raises(NotFound):
        await provider.processes.stop("empty", "0123456789ab")


async def test_running_an_unknown_image_fails_cleanly(provider: Provider) -> None:
    if provider.name == "aws":
        pytest.skip(
            "ECS accepts any image at RunTask; a missing one stops the task later, when its instance "
            "pulls it, and no instance pulls on moto"
        )
    await provider.apps.create("noimage")
    with pytest.raises(NotFound):
        await provider.processes.run("noimage", ProcessRunOptions(service="web", image="rack-test/absent:0"))
    assert await provider.processes.list("noimage") == []
