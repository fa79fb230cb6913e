"""The local log collector's own cost per line, without a Docker Engine: ``python -m bench.logs_pipeline
[--rounds N]``.

Not the product: a probe for issue #14's `convox logs` figures. A burst of ``BURST`` lines, framed as the
Engine's logs API sends them and cut in reads of about 20 KB (what dockerd hands a follower at a time, measured
with strace), goes through the collector as it runs in the logs service: ``Splitter`` -> ``_collect`` ->
ordering and release -> the history on disk -> a follower, whose lines are rendered as the service sends them.
It reports the CPU time of the whole process per line (median of the rounds): the part of the service's CPU per
line that is the store's, apart from the engine's socket, the follower's socket and the loop's waits.

What is simulated: the Docker Engine (:class:`EngineDouble`, the bytes of a container's log, one read per loop
turn) and the state database (:class:`StateDouble`: every app exists, cursors are not saved).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from bench.cases.logs import BURST
from bench.stats import Stats
from shared.logstore.lines import render_block
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import Docker
from shared.provider.local.logs import LocalLogs
from shared.provider.local.state import State

READ = 20_000
"""Bytes per read of the engine's stream (what dockerd's follower socket holds: about 470 messages)."""
CONTAINER = "c0ffee" * 10 + "abcd"
LABELS = {"convox.rack": "bench", "convox.app": "bench", "convox.type": "web", "convox.release": "RBENCHRBENC"}


def stamp(n: int) -> str:
    """The n-th line's time: 7 microseconds apart, Docker's fixed-width form."""
    seconds, nanos = divmod(n * 7000, 10**9)
    return f"2026-12-03T19:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{nanos:09d}Z"


def burst(first: int, tag: bytes) -> list[bytes]:
    """``BURST`` lines from the ``first``-th, framed, in reads of :data:`READ` bytes."""
    body = bytearray()
    for n in range(first, first + BURST):
        payload = stamp(n).encode() + b" " + tag + b"\n"
        body += struct.pack(">BxxxI", 1, len(payload)) + payload
    return [bytes(body[at : at + READ]) for at in range(0, len(body), READ)]


class StateDouble:
    """The state database as the collector asks it during a burst: every app exists, there are no rows."""

    async def fetch_one(self, sql: str, params: tuple[object, ...] = ()) -> dict[str, int]:
        return {"1": 1}

    async def fetch_all(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]:
        return []


class EngineDouble:
    """A container that has exited, whose log is the reads it is given (one read per turn of the loop)."""

    def __init__(self) -> None:
        self.reads: list[bytes] = []

    async def inspect(self, container: str) -> dict[str, object]:
        return {"State": {"Running": False, "FinishedAt": ""}, "Config": {"Tty": False}}

    async def logs(self, container: str, **options: object) -> AsyncIterator[bytes]:
        for data in self.reads:
            yield data
            await asyncio.sleep(0)


async def measure(rounds: int) -> list[float]:
    """CPU microseconds per line of each round."""
    engine = EngineDouble()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    logs = LocalLogs(cast("State", StateDouble()), cast("Docker", engine), cast("LocalApps", None), "bench", data_dir)
    logs.running = True
    logs.events_read_to = "~"

    async def no_cursors() -> None:  # the database is not what is measured
        logs.unsaved.clear()

    logs._save_cursors = no_cursors  # type: ignore[method-assign]
    applog = await logs.applog("bench")
    wanted = 0
    received = 0
    arrived = asyncio.Event()

    async def follower() -> None:
        nonlocal received
        async for batch in applog.read("", True, None):
            render_block(batch)  # as LocalLogs.app does for a raw follower
            received += len(batch)
            if received >= wanted:
                arrived.set()

    jobs = [asyncio.create_task(job()) for job in (follower, logs._pump, logs._flusher)]
    per_line: list[float] = []
    try:
        await asyncio.sleep(0.05)
        for number in range(rounds):
            engine.reads = burst(number * BURST, b"r%d" % number)
            wanted = received + BURST
            arrived.clear()
            began = time.process_time()
            reader = asyncio.create_task(logs._read(CONTAINER, LABELS))
            await arrived.wait()
            per_line.append((time.process_time() - began) / BURST * 1e6)
            await reader
    finally:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        applog.history.remove()
    return per_line


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logs_pipeline")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    gc.set_threshold(10_000, 10, 10)  # as the logs service runs
    per_line = asyncio.run(measure(args.rounds))
    print("CPU per line of each round (us):", " ".join(f"{x:.2f}" for x in per_line))
    print(f"median: {Stats(tuple(per_line)).median:.2f} us per line ({BURST} lines a round, reads of {READ} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
