"""The logs service: app log streams (merged, followed, with history and platform events) and the rack's own
logs. It runs the one collector of the rack's logs (``provider.logs.collect``)."""

from __future__ import annotations

from fastapi import FastAPI

from services.logs.routes import router
from services.logs.settings import LogsSettings
from shared.config import RackSettings
from shared.limits import Slots
from shared.provider import Provider
from shared.service import build_service

NAME = "logs"
ROUTERS = [router]
TAGS = [{"name": "logs", "description": "Log streams of apps and of the rack (websockets)"}]


def create_app(
    settings: RackSettings | None = None,
    provider: Provider | None = None,
    internal: bool = True,
    logs: LogsSettings | None = None,
) -> FastAPI:
    limits = logs or LogsSettings()

    async def collect(opened: Provider) -> None:
        await opened.logs.collect()

    app = build_service(
        NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS, startup=[collect]
    )
    app.state.follows = Slots("log follows", limits.max_follows, "RACK_LOGS_MAX_FOLLOWS")
    return app
