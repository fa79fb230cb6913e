"""The apps service: apps, releases, environment, formation, timers; it owns their state."""

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
        NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS, startup=[adopt]
    )


async def adopt(provider: Provider) -> None:
    """The apps service owns formation: it takes charge of running processes and balancers at start."""
    await provider.formation.adopt()
    await provider.timers.adopt()
