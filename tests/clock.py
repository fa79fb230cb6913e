"""The simulated time the timers tests give the rack's timers (local and aws alike)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)


class FakeClock:
    """The simulated time the timers read: the test moves it, no test waits for a real minute."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def at(self, minute: int) -> None:
        self.now = START.replace(second=0) + timedelta(minutes=minute)
