"""The builds service: source uploads, image builds with live logs, build records."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from shared.config import RackSettings
from shared.provider import Provider
from shared.service import build_service

NAME = "builds"
ROUTERS: list[APIRouter] = []


def create_app(
    settings: RackSettings | None = None, provider: Provider | None = None, internal: bool = True
) -> FastAPI:
    return build_service(NAME, ROUTERS, settings=settings, provider=provider, internal=internal)
