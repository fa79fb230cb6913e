"""Roll-outs on the local provider: one row per promoted release, so that a failed or cancelled roll-out is
remembered while the previous release goes on serving (the app stays ``running``)."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.provider.local.bell import Bell
from shared.provider.local.state import State

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    app TEXT NOT NULL,
    release TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    time TEXT NOT NULL,
    PRIMARY KEY (app, release)
);
"""


class Rollouts:
    def __init__(self, state: State) -> None:
        self.state = state
        self.ready = False
        self.bell: Bell | None = None
        """Rung at each record: whoever waits for a roll-out's end (in any service) reads it again."""

    async def _ensure(self) -> None:
        if not self.ready:
            await self.state.db.executescript(SCHEMA)
            await self.state.db.commit()
            self.ready = True

    async def record(self, app: str, release: str, status: str, message: str = "") -> None:
        """``status``: ``updating``, ``running``, ``failed`` or ``cancelled``."""
        await self._ensure()
        await self.state.execute(
            "INSERT INTO rollouts (app, release, status, message, time) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (app, release) DO UPDATE SET status = excluded.status, message = excluded.message, "
            "time = excluded.time",
            (app, release, status, message, datetime.now(UTC).isoformat()),
        )
        if self.bell is not None:
            self.bell.ring()

    async def latest(self, app: str) -> tuple[str, str, str] | None:
        """The app's latest roll-out: (release, status, message)."""
        await self._ensure()
        row = await self.state.fetch_one(
            "SELECT release, status, message FROM rollouts WHERE app = ? ORDER BY time DESC LIMIT 1", (app,)
        )
        return (row["release"], row["status"], row["message"]) if row else None

    async def interrupted(self) -> list[tuple[str, str]]:
        """Roll-outs a dead process left ``updating``: (app, release)."""
        await self._ensure()
        rows = await self.state.fetch_all("SELECT app, release FROM rollouts WHERE status = 'updating'")
        return [(row["app"], row["release"]) for row in rows]

    async def forget(self, app: str) -> None:
        await self._ensure()
        await self.state.execute("DELETE FROM rollouts WHERE app = ?", (app,))
