"""A container's log as the real Docker Engine streams it to the collector (``Docker.logs``): a followed log
says when it has been quiet for a while (the collector then looks whether Docker's follow stopped at a
rotation), and goes on with the lines written after. Nothing is simulated."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
from collections.abc import Iterator

import pytest

from shared.provider.local.docker import Docker
from tests.conftest import RACK_NAME, remove_labelled_containers

RACK = RACK_NAME + "-enginelogs"


@pytest.fixture
def writer(busybox_image: str) -> Iterator[str]:
    """A container that writes a line, is quiet for a second, writes another and is quiet again."""
    argv = ["docker", "run", "-d", "--label", f"convox.rack={RACK}", busybox_image]
    script = ["sh", "-c", "echo one; sleep 1; echo two; sleep 3600"]
    yield subprocess.run([*argv, *script], capture_output=True, text=True, check=True).stdout.strip()
    remove_labelled_containers(RACK)


async def test_a_followed_log_says_each_quiet_spell_and_goes_on_with_the_lines_after_it(writer: str) -> None:
    docker = Docker(None)
    got: list[tuple[float, bytes]] = []
    try:
        async with asyncio.timeout(20), contextlib.aclosing(docker.logs(writer, follow=True, quiet=0.3)) as chunks:
            async for chunk in chunks:
                got.append((time.monotonic(), chunk))
                if any(b"two" in data for _, data in got) and not chunk:
                    break  # a quiet spell after the second line too
    finally:
        await docker.close()
    kinds = ["one" if b"one" in data else "two" if b"two" in data else "quiet" if not data else "?" for _, data in got]
    assert kinds[0] == "one" and kinds[-1] == "quiet"
    between = kinds[1 : kinds.index("two")]
    assert 2 <= len(between) <= 4 and set(between) == {"quiet"}  # a second of silence: one every 0.3 s
    quiet_at = [when for when, data in got if not data]
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(quiet_at))
