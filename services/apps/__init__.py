"""The apps service: apps, releases, environment, formation, timers; it owns their state. It runs none of the
rack's background work (the logs service runs ``provider.workers()``): a promote or a cancel asked here is
rolled out or cancelled under the workers, and a scale or a restart runs here under the app's lock, which the
workers' roll-outs and reconciliation hold too (across processes)."""

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
        NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS
    )
