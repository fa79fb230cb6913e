"""The apps service: apps, releases, environment, formation, timers; it owns their state, and it is the one
service that runs the rack's background work (``provider.workers()``: adoption, reconciliation, roll-outs,
timers), because roll-outs, scale, restart and cancel of formation are served here, in the same process as
the reconciliation that must not race them. A restart of this service (the supervisor restarts it when it
dies) restarts that work; a promote asked from another service is rolled out here."""

from __future__ import annotations

from fastapi import FastAPI

from services.apps.releases import router as releases_router
from services.apps.routes import router
from shared.config import RackSettings
from shared.provider import Provider
from shared.service import build_service

NAME = "apps"
ROUTERS = [router, releases_router]
TAGS = [
    {"name": "apps", "description": "Apps on the rack"},
    {"name": "releases", "description": "Releases, environment and formation of an app"},
    {"name": "system", "description": "The rack"},
]


def create_app(
    settings: RackSettings | None = None, provider: Provider | None = None, internal: bool = True
) -> FastAPI:
    return build_service(
        NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS, workers=True
    )
