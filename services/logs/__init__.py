"""The logs service: app log streams (merged, followed, with history and platform events) and the rack's own
logs. It is the one service that runs the rack's background work (``provider.workers()``: log collection,
adoption, reconciliation, roll-outs, timers, the failing of dead services' builds, the backing services'
cut-short work), because the local log store hands the lines it collects to the followers in the collecting
process: the streams served here. A restart of this service (the supervisor restarts it when it dies)
restarts that work, collection included; a promote, a cancel, a scale or a restart asked from the apps
service works through the provider (:mod:`shared.provider.local.promotions`, formation's app locks)."""

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
    app = build_service(NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS, workers=True)
    app.state.follows = Slots("log follows", limits.max_follows, "RACK_LOGS_MAX_FOLLOWS")
    return app
