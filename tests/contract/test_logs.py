"""Logs over every provider: platform events, history, follow and the documented errors.

- ``local``: the log store under the data dir;
- ``aws``: the app's CloudWatch Logs group on moto. Nothing runs on moto, so the lines here are platform
  events only (written by the provider itself); process lines are in tests/contract/test_aws_logs.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import NotFound
from shared.provider import Provider


async def history(stream: AsyncIterator[list[bytes]]) -> list[str]:
    return [line.decode() async for batch in stream for line in batch]


async def next_lines(stream: AsyncIterator[list[bytes]], want: str, within: float = 10.0) -> list[str]:
    """Batches of ``stream`` until one of its lines contains ``want``."""
    seen: list[str] = []
    async with asyncio.timeout(within):
        while not any(want in line for line in seen):
            seen.extend(line.decode() for line in await anext(stream))
    return seen


async def written(provider: Provider, app: str, text: str) -> None:
    """Returns once a line containing ``text`` is in the app's log (a follow sees it)."""
    stream = provider.logs.app(app, follow=True, filter=text)
    try:
        await next_lines(stream, text, within=15)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_platform_events_are_in_the_apps_history_in_order(provider: Provider) -> None:
    await provider.apps.create("events")
    await provider.logs.event("events", "first event", release="RAAAAAAAAAA")
    await provider.logs.event("events", "second event", service="web")
    await written(provider, "events", "second event")
    lines = await history(provider.logs.app("events", follow=False))
    texts = [line for line in lines if line.rstrip().endswith("event")]
    assert [t.split(" ", 2)[2].strip() for t in texts] == ["first event", "second event"]
    stamp, source = texts[0].split(" ")[:2]
    assert datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) > datetime.now(UTC) - timedelta(
        minutes=5
    )
    assert source == "convox:RAAAAAAAAAA"
    assert texts[1].split(" ")[1] == "web:"
    of_web = await history(provider.logs.app("events", follow=False, service="web"))
    assert [line.split(" ", 2)[2].strip() for line in of_web if line.rstrip().endswith("event")] == ["second event"]
    filtered = await history(provider.logs.app("events", follow=False, filter="second"))
    assert [line.split(" ", 2)[2].strip() for line in filtered] == ["second event"]


async def test_a_follow_answers_at_once_then_brings_new_lines(provider: Provider) -> None:
    await provider.apps.create("follow")
    stream = provider.logs.app("follow", follow=True)
    try:
        async with asyncio.timeout(10):
            await anext(stream)  # the first batch comes at once, even with no history
        await provider.logs.event("follow", "a new line")
        assert any("a new line" in line for line in await next_lines(stream, "a new line"))
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_history_since_now_leaves_the_older_lines_out(provider: Provider) -> None:
    await provider.apps.create("since")
    await provider.logs.event("since", "old line")
    await written(provider, "since", "old line")
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await history(provider.logs.app("since", follow=False, since=later)) == []


async def test_log_errors(provider: Provider) -> None:
    with pytest.raises(NotFound):
        await anext(provider.logs.app("missing", follow=False))
    await provider.apps.create("quiet")
    with pytest.raises(NotFound):
        await anext(provider.logs.app("quiet", follow=False, pid="0123456789ab"))
    await provider.logs.event("missing", "an event for no app never raises")
    assert await history(provider.logs.app("quiet", follow=False, filter="never")) == []
