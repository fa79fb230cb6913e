"""Rack parameters on the local provider, in SQLite: the image of each backing-service type."""

from __future__ import annotations

import re

from shared.errors import BadRequest
from shared.logfmt import Logger
from shared.provider.local.resource_kinds import PARAM_DEFAULTS
from shared.provider.local.state import State

log = Logger("resources")
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


class LocalParams:
    """Rack parameters in SQLite: the image of each backing-service type (``postgres_image``, ...)."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def get(self) -> dict[str, str]:
        rows = await self.state.fetch_all("SELECT key, value FROM params")
        stored = {row["key"]: row["value"] for row in rows}
        return {key: stored.get(key, default) for key, default in sorted(PARAM_DEFAULTS.items())}

    async def set(self, values: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(values) - set(PARAM_DEFAULTS))
        if unknown:
            raise BadRequest(f"unknown rack parameter: {unknown[0]} (known: {', '.join(sorted(PARAM_DEFAULTS))})")
        for key, value in values.items():
            if value and not IMAGE_RE.fullmatch(value):
                raise BadRequest(f"invalid image for {key}: {value!r}")
        async with self.state.transaction() as tx:  # all of them or none
            for key, value in sorted(values.items()):
                if value:
                    await tx.execute(
                        "INSERT INTO params (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
                else:
                    await tx.execute("DELETE FROM params WHERE key = ?", (key,))
        log.log("params.set", keys=",".join(sorted(values)))
        return await self.get()
