"""What a user asked of each app that is still in progress: a roll-out, a restart or a scale.

An app's lock (:class:`~shared.provider.local.formation.LocalFormation`) is also taken by the rack's own
passes over it (reconciliation, adoption, deletion), for moments. Those are no reason to refuse a user: a
promote that finds only them waits for the lock instead, and only the work recorded here makes it a Conflict.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.errors import Conflict


class Operations:
    def __init__(self) -> None:
        self._by_app: dict[str, dict[object, str]] = {}

    def current(self, app: str) -> str | None:
        """What is in progress for ``app`` (``updating``, ``restarting``, ``scaling``), if anything."""
        running = self._by_app.get(app)
        return next(iter(running.values())) if running else None

    def refuse_if_busy(self, app: str) -> None:
        what = self.current(app)
        if what == "updating":
            raise Conflict(f"app {app} is already updating")
        if what is not None:
            raise Conflict(f"app {app} is {what}: try again when that is done")

    def begin(self, app: str, what: str) -> object:
        """Record ``what`` as in progress for ``app``; the token to :meth:`end` it with."""
        token = object()
        self._by_app.setdefault(app, {})[token] = what
        return token

    def end(self, app: str, token: object) -> None:
        running = self._by_app.get(app)
        if running is not None:
            running.pop(token, None)
            if not running:
                del self._by_app[app]

    @contextmanager
    def during(self, app: str, what: str) -> Iterator[None]:
        token = self.begin(app, what)
        try:
            yield
        finally:
            self.end(app, token)
