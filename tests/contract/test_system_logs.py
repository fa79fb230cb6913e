"""The rack's own log (``LogsAPI.system``) over every provider: its services' lines in time order, one
service's, those containing a text, those since a time, and new ones followed.

Simulated, on both: the rack's supervisor, which writes every service's output as ``SERVICE: text`` lines.
Locally the test appends them to the rack's log file (``DATA/logs/rack.log``) as the supervisor does; on aws
it puts them into the rack's CloudWatch Logs group, in the stream the awslogs driver writes for the rack's API
task (``api/api/TASKID``: the supervisor's stdout; moto runs no task).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.provider import Provider
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import in_moto

STREAM = "api/api/0123456789abcdef0123456789abcdef"


async def written(provider_name: str, data_dir: Path, *lines: tuple[datetime, str]) -> None:
    """``lines`` (time, ``SERVICE: text``) in the rack's log, as the supervisor writes them."""
    if provider_name == "aws":
        group = f"/convox/{RACK_NAME}"
        streams = (await in_moto("logs", "describe_log_streams", logGroupName=group))["logStreams"]
        if STREAM not in [s["logStreamName"] for s in streams]:
            await in_moto("logs", "create_log_stream", logGroupName=group, logStreamName=STREAM)
        events = [{"timestamp": int(moment.timestamp() * 1000), "message": text} for moment, text in lines]
        await in_moto("logs", "put_log_events", logGroupName=group, logStreamName=STREAM, logEvents=events)
        return
    path = data_dir / "logs" / "rack.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write("".join(f"{moment.isoformat()} {text}\n" for moment, text in lines))


async def history(stream: AsyncIterator[list[bytes]]) -> list[str]:
    return [line.decode() async for batch in stream for line in batch]


def texts(lines: list[str]) -> list[str]:
    """Each line without its time: ``SOURCE text``."""
    return [line.split(" ", 1)[1].rstrip("\n") for line in lines]


async def test_the_racks_log_has_its_services_lines_by_service_text_and_time(
    provider: Provider, provider_name: str, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    await written(
        provider_name,
        tmp_path,
        (start, "gateway: ns=gateway at=request path=/apps"),
        (start + timedelta(seconds=1), "apps: ns=apps at=start"),
        (start + timedelta(seconds=2), "gateway: ns=gateway at=request path=/system"),
    )
    lines = await history(provider.logs.system(follow=False))
    assert texts(lines) == [
        "gateway: ns=gateway at=request path=/apps",
        "apps: ns=apps at=start",
        "gateway: ns=gateway at=request path=/system",
    ]
    stamp = lines[0].split(" ", 1)[0]
    assert datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) == start
    assert texts(await history(provider.logs.system(follow=False, service="gateway"))) == [
        "gateway: ns=gateway at=request path=/apps",
        "gateway: ns=gateway at=request path=/system",
    ]
    assert texts(await history(provider.logs.system(follow=False, filter="at=start"))) == ["apps: ns=apps at=start"]
    assert texts(await history(provider.logs.system(follow=False, service="gateway", filter="/system"))) == [
        "gateway: ns=gateway at=request path=/system"
    ]
    later = await history(provider.logs.system(follow=False, since=start + timedelta(seconds=1)))
    assert texts(later) == ["apps: ns=apps at=start", "gateway: ns=gateway at=request path=/system"]
    assert await history(provider.logs.system(follow=False, service="nosuchservice")) == []


async def test_a_follow_of_the_racks_log_answers_at_once_then_brings_new_lines(
    provider: Provider, provider_name: str, tmp_path: Path
) -> None:
    stream = provider.logs.system(follow=True, service="gateway")
    try:
        async with asyncio.timeout(10):
            assert await anext(stream) == []  # at once, with nothing in the log yet
        await written(provider_name, tmp_path, (datetime.now(UTC), "apps: ns=apps at=elsewhere"))
        await written(provider_name, tmp_path, (datetime.now(UTC), "gateway: ns=gateway at=followed"))
        seen: list[str] = []
        async with asyncio.timeout(15):
            while not seen:
                seen.extend(texts([line.decode() for line in await anext(stream)]))
        assert seen == ["gateway: ns=gateway at=followed"]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
