"""Logs on the aws provider: the app's CloudWatch Logs group on moto. Simulated: the lines of a process,
put by the test into the stream the awslogs driver would write (``TYPE/TYPE/TASKID``) for a task placed in
moto (no container runs there, so nothing else writes them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.errors import NotFound
from shared.models import ProcessRunOptions
from shared.provider import Provider
from shared.provider.aws.logs import AwsLogs
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import in_moto, play_builder
from tests.contract.conftest import running_workers


async def deployed(provider: Provider, app: str, tmp_path: Path) -> tuple[str, str, str]:
    """An app with a release and one web task; returns (release, task id, its stream)."""
    await provider.apps.create(app)
    build = await play_builder(provider, app, tmp_path)
    await provider.releases.promote(app, build.release)
    await provider.processes.run(app, ProcessRunOptions(service="web"))
    tasks = await in_moto("ecs", "list_tasks", cluster=RACK_NAME, startedBy=f"convox.{app}", desiredStatus="RUNNING")
    task_id = tasks["taskArns"][0].rsplit("/", 1)[-1]
    stream = f"web/web/{task_id}"
    await in_moto("logs", "create_log_stream", logGroupName=f"/convox/{RACK_NAME}/{app}", logStreamName=stream)
    return build.release, task_id, stream


async def put(app: str, stream: str, *lines: tuple[int, str]) -> None:
    events = [{"timestamp": ms, "message": text} for ms, text in lines]
    await in_moto(
        "logs", "put_log_events", logGroupName=f"/convox/{RACK_NAME}/{app}", logStreamName=stream, logEvents=events
    )


def now_ms() -> int:
    return int(time.time() * 1000)


async def history(provider: Provider, app: str, **kwargs: object) -> list[str]:
    out: list[str] = []
    async for batch in provider.logs.app(app, follow=False, **kwargs):  # type: ignore[arg-type]
        out.extend(line.decode() for line in batch)
    return out


async def test_history_with_filter_service_pid_and_since(aws_provider: Provider, tmp_path: Path) -> None:
    release, task_id, stream = await deployed(aws_provider, "hist", tmp_path)
    pid = task_id.replace("-", "")[-12:]
    start = now_ms() - 5000
    await put("hist", stream, (start, "listening on 3000"), (start + 1000, "GET / 200"), (start + 2000, "GET /x 404"))
    await aws_provider.logs.event("hist", "web scaled: count 2", release=release)
    lines = await history(aws_provider, "hist")
    assert len(lines) == 5
    assert any(line.endswith(f" convox:{release} release promoted\n") for line in lines)  # the provider's own event
    stamp = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert lines[0] == f"{stamp}Z web:{release}/{pid} listening on 3000\n"
    assert lines[-1].split(" ", 1)[1] == f"convox:{release} web scaled: count 2\n"
    assert [line.rsplit(" ", 1)[-1] for line in await history(aws_provider, "hist", filter="GET")] == ["200\n", "404\n"]
    assert len(await history(aws_provider, "hist", pid=pid)) == 3
    assert len(await history(aws_provider, "hist", service="web")) == 4  # its lines and the events about it
    assert await history(aws_provider, "hist", service="worker") == []
    since = datetime.fromtimestamp((start + 1500) / 1000, UTC)
    assert [line.rsplit(" ", 1)[-1] for line in await history(aws_provider, "hist", since=since)][:1] == ["404\n"]
    with pytest.raises(NotFound):
        await history(aws_provider, "hist", pid="0123456789ab")
    with pytest.raises(NotFound):
        await history(aws_provider, "missing")


async def test_following_sends_late_lines_once_and_none_twice(aws_provider: Provider, tmp_path: Path) -> None:
    logs = aws_provider.logs
    assert isinstance(logs, AwsLogs)
    logs.settings = logs.settings.model_copy(update={"log_poll_interval": 0.1, "log_lookback": 5.0})
    _, _, stream = await deployed(aws_provider, "follow", tmp_path)
    received: list[str] = []
    first = asyncio.Event()

    async def read() -> None:
        stream_of: AsyncIterator[list[bytes]] = logs.app("follow", follow=True, service="web")
        async for batch in stream_of:
            received.extend(line.decode().rsplit(" ", 1)[-1].strip() for line in batch)
            first.set()

    reader = asyncio.create_task(read())

    async def until(count: int) -> None:
        deadline = time.monotonic() + 15
        while len(received) < count:
            assert time.monotonic() < deadline, f"only {received} arrived"
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(first.wait(), 15)
        one = now_ms()
        await put("follow", stream, (one, "one"))
        await until(1)
        await asyncio.sleep(0.3)  # a few polls pass: the next line is older than their start
        await put("follow", stream, (one - 1500, "late"))
        await until(2)
        await put("follow", stream, (now_ms(), "three"))
        await until(3)
        await asyncio.sleep(1.0)  # ten more polls, each re-reading the look-back window: none may repeat a line
        assert received == ["one", "late", "three"]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_the_workers_make_the_racks_own_log_group_with_the_historys_retention(aws_provider: Provider) -> None:
    group = f"/convox/{RACK_NAME}"

    async def found() -> list[dict[str, object]]:
        answer = await in_moto("logs", "describe_log_groups", logGroupNamePrefix=group)
        return [g for g in answer["logGroups"] if g["logGroupName"] == group]

    assert await found() == []  # opening the provider makes nothing: its workers do
    async with running_workers(aws_provider):
        [made] = await found()
    assert made["retentionInDays"] == 7  # the history's age, a week by default
