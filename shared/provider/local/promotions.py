"""Roll-outs asked from any service, run by the one that runs the workers (:meth:`LocalProvider.workers`).

Roll-outs run where the workers run (the logs service): their tasks are there, and `convox apps cancel` stops
them there. A promote or a cancel asked elsewhere (the apps service, the provisioner linking a service) is a
row in the state, ``pending``, of its ``kind``; the bell (:mod:`shared.provider.local.bell`) wakes the owner,
which takes the row (a conditional update: one taker), starts the roll-out (or cancels it) and records its
answer: ``started``, or ``refused`` with the error's class and message. The asker, woken in turn, reads the
answer, removes the row and returns the app, or raises that same :mod:`shared.errors` class. When the owner
runs in the asking process, the promote or cancel is direct.

The roll-out's outcome is the app's (``running`` with the release, or its ``failed_release`` and
``failure``): :meth:`Promotions.settled` waits for it, woken by the bell whenever a roll-out is recorded.
An owner killed while it takes a row leaves it ``taking``: its next start refuses it (the app's roll-out, if it
began, is recorded as interrupted by the same start's adoption).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared import errors
from shared.errors import BadRequest, Conflict, RackError, Unavailable
from shared.logfmt import Logger
from shared.models import App
from shared.provider.local.bell import Bell
from shared.provider.local.state import State

if TYPE_CHECKING:
    from shared.provider.local.formation import LocalFormation

log = Logger("promotions")
SCHEMA = """
CREATE TABLE IF NOT EXISTS promotions (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    release TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    time TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'promote'
);
"""
ANSWER_SECONDS = 30.0
"""How long an asker waits for the owner to take its promote (the owner restarting, its engine slow)."""
RECHECK_SECONDS = 2.0
"""A waiter reads the state again at least this often (a ring it did not hear)."""
OWNER_RECHECK_SECONDS = 5.0
STALE = timedelta(hours=1)
INTERRUPTED = "interrupted by a restart of the rack's workers (the logs service)"


def error_of(kind: str, message: str, status: int) -> RackError:
    """The :mod:`shared.errors` class ``kind`` again (a plain RackError with ``status`` for another)."""
    found = getattr(errors, kind, None)
    if isinstance(found, type) and issubclass(found, RackError):
        return found(message) if found is not RackError else RackError(message, status)
    return RackError(message, status)


class Promotions:
    def __init__(self, state: State, formation: LocalFormation, bell: Bell) -> None:
        self.state = state
        self.formation = formation
        self.bell = bell
        self.owner = False
        """This process runs the workers: its promotes and cancels are direct."""
        self.ready = False
        formation.ask_cancel = self.cancel

    async def _ensure(self) -> None:
        if not self.ready:
            await self.state.db.executescript(SCHEMA)
            columns = {row[1] for row in await self.state.db.execute_fetchall("PRAGMA table_info(promotions)")}
            if "kind" not in columns:  # a rack's state from before cancels were asked too
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                    await self.state.db.execute(
                        "ALTER TABLE promotions ADD COLUMN kind TEXT NOT NULL DEFAULT 'promote'"
                    )
            await self.state.db.commit()
            self.ready = True

    # ---- the asking side -----------------------------------------------------------------------------

    async def promote(self, app: str, release_id: str) -> App:
        release = await self.formation.releases.get(app, release_id)  # NotFound here, not from the owner
        if self.owner:
            return await self.formation.promote(release)
        return await self._ask("promote", app, release_id)

    async def cancel(self, app: str) -> App:
        """The roll-out of ``app`` runs in the owner (not here): ask it to cancel it."""
        if self.owner:  # it runs nowhere (it has just ended, or the owner's start is adopting it)
            raise Conflict(f"app {app} is not updating: there is no roll-out to cancel")
        return await self._ask("cancel", app, "")

    async def _ask(self, kind: str, app: str, release_id: str) -> App:
        await self._ensure()
        await self.bell.open()  # listening before asking: the answer's ring is heard
        request = secrets.token_hex(8)
        seen = self.bell.rung
        await self.state.execute(
            "INSERT INTO promotions (id, app, release, status, time, kind) VALUES (?, ?, ?, 'pending', ?, ?)",
            (request, app, release_id, datetime.now(UTC).isoformat(), kind),
        )
        self.bell.ring()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_SECONDS
        while True:
            row = await self.state.fetch_one("SELECT status, error FROM promotions WHERE id = ?", (request,))
            if row is not None and row["status"] in ("started", "refused"):
                break
            if loop.time() > deadline and await self.state.execute(
                "DELETE FROM promotions WHERE id = ? AND status = 'pending'", (request,)
            ):
                asked = release_id or app
                raise Unavailable(f"the rack's workers (the logs service) did not take the {kind} of {asked}")
            await self.bell.wait(seen, min(RECHECK_SECONDS, max(0.05, deadline - loop.time())))
            seen = self.bell.rung
        await self.state.execute("DELETE FROM promotions WHERE id = ?", (request,))
        if row["status"] == "refused":
            answer = json.loads(row["error"])
            raise error_of(str(answer["kind"]), str(answer["message"]), int(answer["status"]))
        return await self.formation.apps.get(app)

    async def settled(self, app: str, within: float) -> App:
        """The app once no roll-out of it is in progress (``within`` seconds at most: then as it is)."""
        await self.bell.open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            seen = self.bell.rung
            current = await self.formation.apps.get(app)
            left = deadline - loop.time()
            if current.status != "updating" or left <= 0:
                return current
            await self.bell.wait(seen, min(RECHECK_SECONDS, left))

    # ---- the owner's side ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At the owner's start: refuse what a dead owner was taking; drop answers nobody read."""
        await self._ensure()
        answer = json.dumps({"kind": "Unavailable", "message": INTERRUPTED, "status": 503})
        if await self.state.execute(
            "UPDATE promotions SET status = 'refused', error = ? WHERE status = 'taking'", (answer,)
        ):
            self.bell.ring()
        old = (datetime.now(UTC) - STALE).isoformat()
        await self.state.execute("DELETE FROM promotions WHERE status != 'pending' AND time < ?", (old,))

    async def serve(self) -> None:
        """Take the pending promotes as they come (woken by the bell), until cancelled."""
        await self._ensure()
        await self.bell.open()
        while True:
            seen = self.bell.rung
            rows = await self.state.fetch_all(
                "SELECT id, app, release, kind FROM promotions WHERE status = 'pending' ORDER BY time"
            )
            for row in rows:
                await self._take(row["id"], row["kind"], row["app"], row["release"])
            await self.bell.wait(seen, OWNER_RECHECK_SECONDS)

    async def _take(self, request: str, kind: str, app: str, release_id: str) -> None:
        if not await self.state.execute(
            "UPDATE promotions SET status = 'taking' WHERE id = ? AND status = 'pending'", (request,)
        ):
            return  # its asker gave up
        status, error = "started", ""
        try:
            if kind == "cancel":
                await self.formation.cancel(app)
            elif kind == "promote":
                await self.formation.promote(await self.formation.releases.get(app, release_id))
            else:  # asked by a newer rack than this one
                raise BadRequest(f"unknown request to the rack's workers: {kind}")
        except RackError as exc:
            status = "refused"
            error = json.dumps({"kind": type(exc).__name__, "message": exc.message, "status": exc.status})
        except Exception as exc:
            log.error(f"release.{kind}", app=app, release=release_id, message=type(exc).__name__)
            status = "refused"
            error = json.dumps({"kind": "RackError", "message": f"{kind} failed: {type(exc).__name__}", "status": 500})
        await self.state.execute("UPDATE promotions SET status = ?, error = ? WHERE id = ?", (status, error, request))
        log.log(f"release.{kind}.asked", app=app, release=release_id, answer=status)
        self.bell.ring()
