"""The apps service: apps, releases, environment, formation; it owns their state."""

from __future__ import annotations

from fastapi import FastAPI

from services.apps.routes import router
from shared.config import RackSettings
from shared.provider import Provider
from shared.service import build_service

NAME = "apps"
ROUTERS = [router]
TAGS = [{"name": "apps", "description": "Apps on the rack"}, {"name": "system", "description": "The rack"}]


def create_app(
    settings: RackSettings | None = None, provider: Provider | None = None, internal: bool = True
) -> FastAPI:
    return build_service(NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS)
