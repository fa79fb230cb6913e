"""Which base images `convox init` writes: the official ones (``python:3.12-slim``, ``node:20-slim``...), or
the offline ones `make images` builds from Debian's packages (images/README.md) for an engine that cannot
pull.

``--base official`` and ``--base offline`` choose. Without ``--base`` the official bases are written, unless
the CLI is logged in to a rack whose engine has neither the official image nor a registry answering for it
(``GET /system/images``): then the offline base is written when that engine has it, and when it has not,
``make images`` is named. What was chosen and how to switch is said on stderr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cli.errors import CliError
from shared.protocol import ImageStatus

BASES = ("official", "offline")
OFFLINE = {"python": "python3", "node": "node"}
"""The kinds of app that have an offline base, and its name under images/."""
SUITE = "bookworm"
ASK_SECONDS = 10.0
"""How long `convox init` waits for the rack (which gives a registry 5 s)."""


def offline_image(kind: str) -> str | None:
    """``rack-local/python3:bookworm`` for a Python app (``RACK_IMAGE_PREFIX`` as for images/build.sh)."""
    name = OFFLINE.get(kind)
    if name is None:
        return None
    return f"{os.environ.get('RACK_IMAGE_PREFIX') or 'rack-local'}/{name}:{SUITE}"


@dataclass
class Choice:
    offline: bool
    notes: list[str] = field(default_factory=list)
    """What to tell the user on stderr: why this base, and how to choose the other."""


def choose(kind: str, official: list[str], base: str | None) -> Choice:
    """The base for an app of ``kind`` whose official Dockerfile starts from ``official``; ``base`` is the
    ``--base`` option (None: ask the rack, if the CLI is logged in to one)."""
    if base == "official":
        return Choice(offline=False)
    offline = offline_image(kind)
    if base == "offline":
        if offline is None:
            raise CliError(f"there is no offline base for {kind} apps (there is for: {', '.join(OFFLINE)})")
        try:
            found = _ask([offline])
        except CliError as exc:
            return Choice(True, [f"Could not ask the rack whether its engine has {offline}: {exc}"])
        if found is not None and found[offline].get("present") is False:
            return Choice(True, [f"The rack's engine has no {offline} yet: run `make images` where the rack runs"])
        return Choice(offline=True)
    wanted = official + ([offline] if offline else [])
    try:
        found = _ask(wanted)
    except CliError as exc:
        return Choice(False, [f"Could not ask the rack whether its engine can pull {', '.join(official)}: {exc}"])
    if found is None or all(_usable(found[image]) for image in official):
        return Choice(offline=False)
    missing = ", ".join(image for image in official if not _usable(found[image]))
    cannot = f"The rack's engine cannot pull {missing} (no registry answers for it)"
    if offline is None:
        return Choice(
            False,
            [
                f"{cannot}: builds of this Dockerfile fail there until it can (offline bases exist for "
                f"{' and '.join(OFFLINE)} apps only)"
            ],
        )
    if found[offline]["present"] is True:
        return Choice(
            True,
            [
                f"{cannot}: wrote FROM {offline}, the offline base that `make images` builds "
                "(`convox init --base official --force` writes the official one)"
            ],
        )
    return Choice(
        False,
        [
            f"{cannot}, nor has it the offline base {offline}: run `make images` where the rack runs, then "
            "`convox init --base offline --force`"
        ],
    )


def _usable(status: ImageStatus) -> bool:
    """A build can start from the image, as far as the rack can tell (unknown counts as usable)."""
    return status["present"] is True or status["pullable"] is not False


def _ask(images: list[str]) -> dict[str, ImageStatus] | None:
    """What the rack says of each image; None when the CLI is logged in to no rack."""
    from cli.client import Client
    from cli.config import current_rack

    try:
        rack = current_rack()
    except CliError:
        return None
    with Client(rack, timeout=ASK_SECONDS) as client:
        answer = client.get_list("/system/images", ImageStatus, params={"image": images})
    found = {item["image"]: item for item in answer}
    missing = [image for image in images if image not in found]
    if missing:
        raise CliError(f"the rack did not say whether it has {', '.join(missing)}")
    return found
