"""The provisioner service: backing services (postgres, mysql, mariadb, redis, memcached): create, link,
delete, proxy, export and import; rack params."""

from __future__ import annotations

from fastapi import FastAPI

from services.provisioner.linking import Linker
from services.provisioner.proxy import router as proxy_router
from services.provisioner.routes import params_router, router
from services.provisioner.settings import ProvisionerSettings
from services.provisioner.transfers import router as transfers_router
from shared.config import RackSettings
from shared.provider import Provider
from shared.service import build_service

NAME = "provisioner"
ROUTERS = [router, proxy_router, transfers_router, params_router]
TAGS = [
    {"name": "services", "description": "Backing services (postgres, mysql, mariadb, redis, memcached) for apps"},
    {"name": "system", "description": "The rack"},
]


def create_app(
    settings: RackSettings | None = None,
    provider: Provider | None = None,
    internal: bool = True,
    provisioner: ProvisionerSettings | None = None,
) -> FastAPI:
    settings = settings or RackSettings()

    async def start(opened: Provider) -> None:
        app.state.linker = Linker(opened)  # what a dead provisioner left half done: the workers' owner takes it

    app = build_service(
        NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS, startup=[start]
    )
    app.state.provisioner_settings = provisioner or ProvisionerSettings()
    return app
