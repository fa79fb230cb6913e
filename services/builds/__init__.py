"""The builds service: source uploads, image builds with live logs, build records."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from services.builds.resources import ProvisionerResources
from services.builds.routes import UPLOAD_PATH, UPLOADS, router
from services.builds.settings import BuildsSettings
from shared.archive import remove_tree
from shared.config import RackSettings
from shared.limits import Slots
from shared.provider import Provider
from shared.service import build_service

NAME = "builds"
ROUTERS = [router]
TAGS = [{"name": "builds", "description": "Source uploads, image builds and their logs"}]


def create_app(
    settings: RackSettings | None = None,
    provider: Provider | None = None,
    internal: bool = True,
    builds: BuildsSettings | None = None,
) -> FastAPI:
    settings = settings or RackSettings()

    async def prepare(opened: Provider) -> None:
        """Builds run in this service: at its start, the uploads a dead one left go and builds get their
        resources hook. (A build a dead one left running is failed by the owner of the background work:
        :meth:`shared.provider.contract.Provider.workers`.)"""
        uploads = settings.data_dir / UPLOADS
        if uploads.is_dir():
            for leftover in await asyncio.to_thread(lambda: list(uploads.glob("upload-*"))):
                await asyncio.to_thread(remove_tree, leftover)
        opened.builds.link_resources(ProvisionerResources(settings, opened))

    app = build_service(
        NAME,
        ROUTERS,
        settings=settings,
        provider=provider,
        internal=internal,
        tags=TAGS,
        startup=[prepare],
        raw_bodies=[UPLOAD_PATH],
    )
    app.state.builds_settings = limits = builds or BuildsSettings()
    app.state.uploads = Slots("source uploads", limits.max_uploads, "RACK_BUILDS_MAX_UPLOADS")
    return app
