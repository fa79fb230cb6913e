"""Caps on long-lived work (exec sessions, log follows, uploads, builds): past its cap, a new one is refused
with 429 and a clear error rather than let one client exhaust what every client shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.errors import TooManyRequests


class Slots:
    """At most ``limit`` of one kind of work at once in this process."""

    def __init__(self, what: str, limit: int, setting: str) -> None:
        self.what = what
        self.limit = limit
        self.setting = setting
        self.used = 0

    def take(self) -> None:
        """One slot, or :class:`TooManyRequests`; give it back with :meth:`give`."""
        if self.used >= self.limit:
            raise TooManyRequests(
                f"too many {self.what} at once (the limit is {self.limit}, setting {self.setting}): "
                "end one or try again later"
            )
        self.used += 1

    def give(self) -> None:
        self.used = max(0, self.used - 1)

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give()
