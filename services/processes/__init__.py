"""The processes service: ps (with CPU/MEM), run, exec, stop, live metrics."""

from __future__ import annotations

from fastapi import FastAPI

from services.processes.rack import router as rack_router
from services.processes.routes import router
from services.processes.settings import ProcessesSettings
from shared.config import RackSettings
from shared.limits import Slots
from shared.provider import Provider
from shared.service import build_service

NAME = "processes"
ROUTERS = [router, rack_router]
TAGS = [{"name": "processes", "description": "Processes of apps: ps, run, exec, stop, live metrics"}]


def create_app(
    settings: RackSettings | None = None,
    provider: Provider | None = None,
    internal: bool = True,
    processes: ProcessesSettings | None = None,
) -> FastAPI:
    app = build_service(
        NAME, ROUTERS, settings=settings, provider=provider, internal=internal, tags=TAGS
    )
    limit = (processes or ProcessesSettings()).max_sessions
    app.state.sessions = Slots("exec and run sessions", limit, "RACK_PROCESSES_MAX_SESSIONS")
    return app
