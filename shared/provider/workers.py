"""The rack's background work under one owner: :meth:`Provider.workers` runs each of a provider's loops here.

A provider names its background work as :class:`Loop`\\ s (reconciliation, roll-outs asked from other services,
timers...): each has an optional start step (adoption after a restart) and a body that runs until cancelled.
:func:`supervise` runs them all in one task group: a start step that fails is tried again with back-off, and
``started`` is called once every start step has run (the owning service answers from then on); a body that
fails (or returns) is logged and started again with back-off, without stopping the others. Nothing is
restarted silently: every failure is a ``worker.failed`` line. Cancelling :func:`supervise` ends them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from shared.errors import RackError
from shared.logfmt import Logger

log = Logger("workers")
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before the n-th restart of a failing loop (the last one repeats)."""
HEALTHY_SECONDS = 60.0
"""A loop that ran this long before it failed starts its back-off over."""


@dataclass(frozen=True)
class Loop:
    name: str
    """What it is, in the logs: ``formation.watch``."""
    run: Callable[[], Awaitable[None]] | None = None
    """The body, meant to run until cancelled (``None``: a start step only)."""
    start: Callable[[], Awaitable[None]] | None = None
    """Run once before the body (adoption after a restart); tried again until it succeeds."""


def _reason(exc: BaseException) -> str:
    return (
        exc.message
        if isinstance(exc, RackError)
        else (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    )


async def _keep(loop: Loop, started: asyncio.Event, backoff: Sequence[float]) -> None:
    failures = 0
    while loop.start is not None:
        try:
            await loop.start()
            break
        except Exception as exc:
            log.error("worker.failed", worker=loop.name, step="start", restarts=failures, message=_reason(exc))
        await asyncio.sleep(backoff[min(failures, len(backoff) - 1)])
        failures += 1
    started.set()
    if loop.run is None:
        return
    failures = 0
    clock = asyncio.get_running_loop()
    while True:
        began = clock.time()
        try:
            await loop.run()
            log.error("worker.failed", worker=loop.name, restarts=failures, message="it returned")
        except Exception as exc:
            log.error("worker.failed", worker=loop.name, restarts=failures, message=_reason(exc))
        if clock.time() - began > HEALTHY_SECONDS:
            failures = 0
        await asyncio.sleep(backoff[min(failures, len(backoff) - 1)])
        failures += 1


async def supervise(
    loops: Sequence[Loop], started: Callable[[], None] | None = None, backoff: Sequence[float] = BACKOFF_SECONDS
) -> None:
    """Run ``loops`` until cancelled (see the module); ``started`` is called once all their start steps ran."""
    events = [asyncio.Event() for _ in loops]
    async with asyncio.TaskGroup() as group:
        for loop, event in zip(loops, events, strict=True):
            group.create_task(_keep(loop, event, backoff), name=f"worker {loop.name}")
        for event in events:
            await event.wait()
        log.log("workers.started", loops=len(loops))
        if started is not None:
            started()
