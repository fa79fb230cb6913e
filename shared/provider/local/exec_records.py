"""The execs the rack's processes hold, on record: an exec's command outlives the process whose stream started
it when that process dies (``kill -9`` included: the Engine does not end an exec whose connection closes, and
in the passed mode the client holds that connection anyway), so each exec is written down with the runner
token of the process that holds it (:mod:`shared.provider.local.runners`), and the owner of the background work
ends the execs whose runner is dead (:meth:`ExecRecords.reap`, from the processes' reaper).

An exec is recorded after it is made and before it starts, and its record goes when its stream is closed and
its process is known to have ended; a record whose exec is gone (the container removed, the Engine
restarted) just goes.
"""

from __future__ import annotations

import re
import time

from shared.errors import NotFound, RackError
from shared.logfmt import Logger
from shared.provider.engine.docker import Engine
from shared.provider.engine.ending import end_process
from shared.provider.local.runners import Runner, dead
from shared.provider.local.state import State

log = Logger("processes")

ID = re.compile(r"[0-9a-f]{64}")
"""An exec's or a container's id as the Engine gives it (a record is read back into a request path)."""


class ExecRecords:
    """This process's execs on record (an :class:`~shared.provider.engine.exec.ExecWatch`), and the reaping
    of every process's execs whose runner is dead."""

    def __init__(self, state: State, runner: Runner) -> None:
        self.state = state
        self.runner = runner

    async def started(self, exec_id: str, container_id: str, mark: str, user: str) -> None:
        token = await self.runner.holding()
        await self.state.execute(
            "INSERT OR REPLACE INTO execs (id, container, runner, created, mark, user) VALUES (?, ?, ?, ?, ?, ?)",
            (exec_id, container_id, token, time.time(), mark, user),
        )

    async def ended(self, exec_id: str) -> None:
        await self.state.execute("DELETE FROM execs WHERE id = ?", (exec_id,))

    async def reap(self, docker: Engine) -> int:
        """End the execs whose runner is dead (their process tree killed, as a stream closed under a running
        exec does) and forget them; how many were still running."""
        rows = await self.state.fetch_all("SELECT id, container, runner, mark, user FROM execs")
        gone = await dead(self.runner.root, {row["runner"] for row in rows})
        ended = 0
        for row in rows:
            if row["runner"] not in gone:
                continue
            exec_id, container_id = str(row["id"]), str(row["container"])
            if ID.fullmatch(exec_id) and ID.fullmatch(container_id):
                try:
                    if not await self._end(docker, exec_id, container_id, str(row["mark"]), str(row["user"])):
                        await self.ended(exec_id)
                        continue
                except Exception as exc:  # the Engine did not answer: the record stays for the next round
                    message = exc.message if isinstance(exc, RackError) else type(exc).__name__
                    log.error("process.reap", id=container_id[:12], exec=exec_id[:12], message=message)
                    continue
                ended += 1
                log.log("process.reap", id=container_id[:12], exec=exec_id[:12], reason="exec runner dead")
            await self.ended(exec_id)
        return ended

    @staticmethod
    async def _end(docker: Engine, exec_id: str, container_id: str, mark: str, user: str) -> bool:
        """Kill the exec's process tree if it still runs; whether it ran."""
        try:
            info = await docker.exec_inspect(exec_id, f"process {container_id[:12]}")
        except NotFound:  # its container is gone, or the Engine forgot it (a restart): nothing runs
            return False
        pid = int(info.get("Pid") or 0)
        if not info.get("Running") or not pid:
            return False
        await end_process(docker, container_id, pid, False, mark, user)
        return True
