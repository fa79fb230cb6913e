"""Roll-out steps: how a process type's old processes give way to new ones within its ``deployment`` (Convox's
``minimum`` and ``maximum``, ECS's minimum healthy and maximum percent of the count).

Throughout a roll-out at least ``ceil(count * minimum / 100)`` processes serve (old ones running, or new ones
that passed their health check) and at most ``floor(count * maximum / 100)`` run in all (old and new). Each
step stops as many old processes as these allow (those that do not serve first), then starts a batch of new
ones; once they are healthy they serve beside the old ones that are left, and the next step goes on. With the
default (minimum 50, maximum 200) the whole count starts at once and nothing old stops before it is healthy;
a ``singleton`` is minimum 0, maximum 100: the old process stops, then the new one starts. When the two leave
no room (minimum and maximum 100), one new process at a time starts beyond the maximum: the minimum is
never broken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    serving: int
    """At least this many serve at every moment of the roll-out."""
    running: int
    """At most this many run at once (old and new)."""


def bounds(count: int, minimum: int, maximum: int) -> Bounds:
    return Bounds(serving=math.ceil(count * minimum / 100), running=max(count * maximum // 100, count))


@dataclass(frozen=True)
class Step:
    stop: int
    """Old processes to stop first (those that do not serve first)."""
    start: int
    """New processes to start then; 0 when the new ones are all there."""


def next_step(count: int, minimum: int, maximum: int, new: int, old_serving: int, old_other: int = 0) -> Step:
    """The next step when ``new`` processes of the release are healthy and ``old_serving`` old ones serve
    (``old_other``: old ones alive that do not serve, such as one the Engine is restarting)."""
    need = count - new
    if need <= 0:
        return Step(0, 0)
    limits = bounds(count, minimum, maximum)
    room = limits.running - (new + old_serving + old_other)
    stop = 0
    if room < need:
        stop = min(old_other, need - room)
        spare = max(0, new + old_serving - limits.serving)
        stop += min(old_serving, spare, need - room - stop)
        room += stop
    return Step(stop, min(max(room, 1), need))
