"""Waiting for a release's roll-out, as `convox deploy`, `convox releases promote` and the ``--promote`` of the
env commands do (no Typer here: `convox deploy` runs without loading the command tree)."""

from __future__ import annotations

import time

from cli import output
from cli.client import Client
from cli.errors import CliError, RackUnavailable
from shared.protocol import App

UNAVAILABLE_FOR = 60.0
"""How long a roll-out is waited for through a rack that does not answer (see :func:`wait_for_rollout`)."""
SETTLED_FOR = 10.0
"""Seconds each ask of a roll-out's wait lets the rack hold the answer until the roll-out ends."""


def wait_for_rollout(c: Client, app: str, release: str, within: float = 600) -> None:
    """Wait until the roll-out of ``release`` is done; a failed one is an error. Each ask lets the rack answer
    once no roll-out of the app is in progress (``GET /apps/APP?settled=``, for up to :data:`SETTLED_FOR`
    seconds), so the CLI hears of the end when it happens instead of at its next poll. A rack that does not
    answer for a moment (its gateway or apps service restarting) is asked again, for up to
    :data:`UNAVAILABLE_FOR` seconds in a row: the roll-out goes on (or is failed cleanly) meanwhile, and what
    the CLI says is what the app runs."""
    deadline = time.monotonic() + within
    pause = 0.05
    unavailable: float | None = None
    while time.monotonic() < deadline:
        asked = time.monotonic()
        wait = max(0.0, min(SETTLED_FOR, deadline - asked))
        try:
            data = c.get(f"/apps/{app}", App, params={"settled": f"{wait:.3f}"})
        except RackUnavailable:
            unavailable = unavailable or time.monotonic()
            if time.monotonic() - unavailable > UNAVAILABLE_FOR:
                raise
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)
            continue
        unavailable = None
        if data["status"] == "running" and data["release"] == release:
            return
        if data["status"] == "failed" or data["failed_release"] == release:
            why = f" ({data['failure']})" if data["failure"] else ""
            raise CliError(
                f"release {release} failed to roll out{why}; {data['release'] or 'nothing'} is still serving "
                f"(see `convox logs --app {app}`)"
            )
        if time.monotonic() - asked < 0.05:  # settled at once yet not this release's end (or a rack that
            time.sleep(0.05)  # does not wait): ask again soon, not in a tight loop
    raise CliError(f"release {release} is still rolling out after {within:.0f}s")


def promote(c: Client, app: str, release: str) -> None:
    with output.step(f"Promoting {release}"):
        c.send("POST", f"/apps/{app}/releases/{release}/promote")
        wait_for_rollout(c, app, release)
