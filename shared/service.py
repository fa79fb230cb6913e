"""Building and running one internal service: its provider opened in the lifespan, its routers, its socket."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, FastAPI, Request

from shared import __version__
from shared.config import RackSettings
from shared.http import create_service_app
from shared.provider import Provider, load_provider


def provider_of(request: Request) -> Provider:
    """The provider opened in the service's lifespan (a FastAPI dependency)."""
    return cast("Provider", request.app.state.provider)


def build_service(
    name: str,
    routers: Sequence[APIRouter],
    *,
    settings: RackSettings | None = None,
    provider: Provider | None = None,
    internal: bool = True,
    tags: list[dict[str, Any]] | None = None,
    startup: Sequence[Callable[[Provider], Awaitable[None]]] = (),
    raw_bodies: Sequence[str] = (),
) -> FastAPI:
    """A service app. ``startup`` runs with the opened provider before the service answers.
    ``provider`` replaces the configured one (tests pass a fake through this seam);
    ``internal=False`` drops the gateway-secret guard, for in-process tests only; ``raw_bodies`` are the
    paths (regexes) whose bodies a route streams itself, exempt from the JSON body cap."""
    settings = settings or RackSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with provider or load_provider(settings) as opened:
            app.state.provider = opened
            app.state.settings = settings
            for hook in startup:
                await hook(opened)
            yield

    secret = settings.internal_secret.get_secret_value() if internal else None
    app = create_service_app(
        name, version=__version__, lifespan=lifespan, tags=tags, secret=secret, raw_bodies=raw_bodies
    )
    for router in routers:
        app.include_router(router)
    return app


def main(
    name: str,
    routers: Sequence[APIRouter],
    argv: Sequence[str] | None = None,
    tags: list[dict[str, Any]] | None = None,
    create: Callable[[RackSettings], FastAPI] | None = None,
) -> None:
    """``python -m services.NAME --socket PATH``: what the supervisor runs for each service."""
    from shared.serve import serve

    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("--socket", type=Path, help="unix socket to listen on")
    parser.add_argument("--data-dir", type=Path, help="the rack's data dir")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    settings = RackSettings(**overrides)
    if not settings.internal_secret.get_secret_value():
        sys.exit(f"ERROR: RACK_INTERNAL_SECRET is not set; services.{name} only serves the gateway")
    app = create(settings) if create else build_service(name, routers, settings=settings, tags=tags)
    serve(app, uds=args.socket or settings.socket_path(name))
