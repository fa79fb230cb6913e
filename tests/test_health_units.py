"""A roll-out's health check of a new process, without an engine: the engine is a test double that answers
`inspect` with the states a real one goes through (simulated: the container, its restarts)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from shared.errors import RackError
from shared.provider.local.docker import ContainerInfo, Docker
from shared.provider.local.events import Events
from shared.provider.local.health import HealthChecks


class EngineDouble:
    """Answers each `inspect` with the next of ``states`` (then the last again): a container that keeps
    running, or one that crash-loops under its restart policy (running at each look, restarted between)."""

    def __init__(self, *states: dict[str, Any], exits: tuple[int, ...] = ()) -> None:
        self.states = list(states)
        self.looks = 0
        self.exits = list(exits)
        """The exit codes its ``die`` events give (simulated: the engine's event history)."""

    async def inspect(self, container_id: str) -> dict[str, Any]:
        self.looks += 1
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    async def exit_codes(self, container_id: str, since: float) -> list[int]:
        return self.exits


class EventsDouble:
    def __init__(self) -> None:
        self.emitted: list[str] = []

    async def emit(self, app: str, message: str, **_: str) -> None:
        self.emitted.append(message)


CONTAINER = cast("ContainerInfo", {"Id": "c0ffee", "Config": {"Labels": {"convox.app": "app"}}})


def checks(engine: EngineDouble, events: EventsDouble) -> HealthChecks:
    return HealthChecks(cast("Docker", engine), "net", cast("Events", events))


async def test_a_process_without_a_port_that_keeps_running_is_healthy() -> None:
    engine = EngineDouble({"State": {"Running": True}, "RestartCount": 0})
    await checks(engine, EventsDouble()).wait(CONTAINER, "worker", None, None)
    assert engine.looks == 2


async def test_a_process_restarted_by_the_engine_between_two_looks_is_not_healthy() -> None:
    events = EventsDouble()
    engine = EngineDouble(
        {"State": {"Running": True}, "RestartCount": 0},
        {"State": {"Running": True}, "RestartCount": 3},  # it exited, and "unless-stopped" started it again
    )
    with pytest.raises(RackError, match="restarted by the engine"):
        await checks(engine, events).wait(CONTAINER, "web", None, None)
    assert events.emitted == ["web failed its health check (exited, restarted by the engine)"]


async def test_a_process_restarted_by_the_engine_is_reported_with_its_exit_code() -> None:
    events = EventsDouble()
    engine = EngineDouble(
        {"State": {"Running": True}, "RestartCount": 0},
        {"State": {"Running": True, "ExitCode": 0}, "RestartCount": 1},  # the new run's state: no exit code
        exits=(1,),
    )
    with pytest.raises(RackError, match=r"^web exited with code 1 before it was healthy \(restarted by the engine\)$"):
        await checks(engine, events).wait(CONTAINER, "web", None, None)
    assert events.emitted == ["web failed its health check (exited with code 1, restarted by the engine)"]
