"""Read receipts of the logs collector: a one-off process's container is removed only once the collector has
read its log to the end, so that the output of a process that writes and exits at once is never lost.

The collector (in the logs service) writes a receipt for each stopped one-off it has read, and a heartbeat
while it runs; whoever removes one-offs (the processes service) waits for the receipt, but not for a
collector that is not there (no heartbeat, or a stale one): the log then stays with nobody to read it.
"""

from __future__ import annotations

import asyncio
import time

from shared.logfmt import Logger
from shared.provider.local.state import State

log = Logger("logs")
HEARTBEAT = "*"
BEAT_SECONDS = 1.0
STALE_SECONDS = 5.0
"""A heartbeat older than this: no collector runs."""
WAIT_SECONDS = 15.0
"""The longest a removal waits for a running collector's receipt (it reads a stopped container in tenths)."""
POLL_SECONDS = 0.05


class Receipts:
    def __init__(self, state: State) -> None:
        self.state = state

    async def beat(self) -> None:
        await self.state.execute(
            "INSERT INTO log_receipts (container, at) VALUES (?, ?) ON CONFLICT (container) DO UPDATE SET at = "
            "excluded.at",
            (HEARTBEAT, time.time()),
        )

    async def beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # the database is busy or failing: the next beat tries again
                log.error("receipts.beat", error=type(exc).__name__)
            await asyncio.sleep(BEAT_SECONDS)

    async def gone(self) -> None:
        """The collector stops: nobody waits for it any more."""
        await self.state.execute("DELETE FROM log_receipts WHERE container = ?", (HEARTBEAT,))

    async def read(self, container: str) -> None:
        """The collector has read the stopped ``container``'s log to its end."""
        await self.state.execute(
            "INSERT INTO log_receipts (container, at) VALUES (?, ?) ON CONFLICT (container) DO NOTHING",
            (container, time.time()),
        )

    async def wait(self, container: str, within: float = WAIT_SECONDS) -> bool:
        """Until the collector has read the stopped ``container`` (True), or no collector runs, or ``within``
        seconds have passed (False)."""
        deadline = time.monotonic() + within
        while True:
            rows = await self.state.fetch_all(
                "SELECT container, at FROM log_receipts WHERE container IN (?, ?)", (container, HEARTBEAT)
            )
            found = {row["container"]: float(row["at"]) for row in rows}
            if container in found:
                return True
            beat = found.get(HEARTBEAT)
            if beat is None or time.time() - beat > STALE_SECONDS:
                return False
            if time.monotonic() > deadline:
                log.error("receipts.wait", id=container[:12], message="the collector has not read it in time")
                return False
            await asyncio.sleep(POLL_SECONDS)

    async def forget(self, container: str) -> None:
        await self.state.execute("DELETE FROM log_receipts WHERE container = ?", (container,))

    async def forget_old(self, age: float = 3600.0) -> None:
        """Receipts of containers whose removal was cut short."""
        await self.state.execute(
            "DELETE FROM log_receipts WHERE container != ? AND at < ?", (HEARTBEAT, time.time() - age)
        )
