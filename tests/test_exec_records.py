"""The execs on record (:mod:`shared.provider.local.exec_records`): which ones the reaper ends and forgets, which
it keeps. The database and the runner locks are real; the Engine is a test double (``EngineDouble``: it only
answers exec inspects, as the test sets them). That a reaped exec's process is really killed is proven on the
real engine, by ``tests/test_processes_cli.py::test_a_stream_that_ends_without_a_status_is_an_error``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from shared.errors import NotFound, Unavailable
from shared.provider.engine.docker import Engine, ExecInfo
from shared.provider.local.exec_records import ExecRecords
from shared.provider.local.runners import Runner
from shared.provider.local.state import State

CONTAINER = "c" * 64


def exec_id(n: int) -> str:
    return f"{n:x}".rjust(64, "e")


class EngineDouble:
    """Answers exec inspects from ``answers``: an exec's document, or an error to raise."""

    def __init__(self, answers: dict[str, ExecInfo | Exception]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def exec_inspect(self, exec_id: str, what: str) -> ExecInfo:
        self.asked.append(exec_id)
        answer = self.answers[exec_id]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def on_record(state: State) -> set[str]:
    return {str(row["id"]) for row in await state.fetch_all("SELECT id FROM execs")}


def test_the_reaper_forgets_the_execs_of_dead_runners_and_keeps_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        state = State(tmp_path / "state.db")
        await state.open()
        try:
            alive = ExecRecords(state, Runner(tmp_path / "runners"))  # this process's: its lock is held
            died = ExecRecords(state, Runner(tmp_path / "runners"))
            await alive.started(exec_id(1), CONTAINER, "", "")
            for n in (2, 3, 4, 5):
                await died.started(exec_id(n), CONTAINER, "", "")
            died.runner.release()  # as the kernel drops a killed process's lock
            engine = EngineDouble(
                {
                    exec_id(2): NotFound("gone"),  # its container removed: nothing runs
                    exec_id(3): {"Running": False, "Pid": 0, "ExitCode": 0},  # it ended meanwhile
                    exec_id(4): Unavailable("the docker engine did not answer"),  # asked again next round
                    exec_id(5): NotFound("gone"),
                }
            )
            assert await alive.reap(cast("Engine", engine)) == 0
            assert await on_record(state) == {exec_id(1), exec_id(4)}
            assert exec_id(1) not in engine.asked  # a live runner's exec is its own business
            engine.answers[exec_id(4)] = NotFound("gone")
            await alive.reap(cast("Engine", engine))
            assert await on_record(state) == {exec_id(1)}
            await alive.ended(exec_id(1))
            assert await on_record(state) == set()
        finally:
            await state.close()

    asyncio.run(main())


def test_a_record_that_is_no_exec_id_is_forgotten_without_asking_the_engine(tmp_path: Path) -> None:
    async def main() -> None:
        state = State(tmp_path / "state.db")
        await state.open()
        try:
            records = ExecRecords(state, Runner(tmp_path / "runners"))
            await state.execute(
                "INSERT INTO execs (id, container, runner, created) VALUES (?, ?, ?, 0)",
                ("../../containers/x/kill?", CONTAINER, "0123456789abcdef"),
            )
            engine = EngineDouble({})
            assert await records.reap(cast("Engine", engine)) == 0
            assert engine.asked == [] and await on_record(state) == set()
        finally:
            await state.close()

    asyncio.run(main())
