"""Building and running one internal service: its provider opened in the lifespan, its routers, its socket."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from fastapi import APIRouter, FastAPI
from starlette.requests import HTTPConnection

from shared import __version__
from shared.config import RackSettings
from shared.errors import Unavailable
from shared.http import create_service_app
from shared.logfmt import Logger
from shared.provider import Provider, load_provider

log = Logger("service")
STARTUP_WAIT_SECONDS = 10.0
"""How long the service waits for a start-up hook before it answers anyway (the hook goes on meanwhile)."""
RETRY_SECONDS = (1.0, 2.0, 5.0)

Hook = Callable[[Provider], Awaitable[None]]


async def _retried(name: str, hook: Hook, opened: Provider, first: asyncio.Task[None] | None) -> None:
    """Finish a start-up hook in the background: wait for ``first`` (the attempt under way), then run it
    again while the engine (or whatever it needs) is unavailable, backing off, until it succeeds."""
    attempt = 0
    while True:
        try:
            if first is not None:
                await first
                first = None
            else:
                await hook(opened)
            log.log("startup.done", service=name, hook=hook.__name__, attempts=attempt + 1)
            return
        except Unavailable as exc:
            log.error("startup.retry", service=name, hook=hook.__name__, message=exc.message)
        except Exception as exc:
            log.error("startup.failed", service=name, hook=hook.__name__, message=str(exc) or type(exc).__name__)
            return
        await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
        attempt += 1


async def run_startup(name: str, hooks: Sequence[Hook], opened: Provider) -> list[asyncio.Task[None]]:
    """Run each hook before the service answers, except what needs an engine that is down or hung: such a
    hook (one raising :class:`Unavailable`, or still running after ``STARTUP_WAIT_SECONDS``) goes on in the
    background, so the rack starts while its engine is away and catches up when it is back. Returns the
    background tasks, for the service to cancel when it stops. Any other failure fails the start."""
    background = []
    for hook in hooks:
        first = asyncio.ensure_future(hook(opened))
        done, _ = await asyncio.wait({first}, timeout=STARTUP_WAIT_SECONDS)
        if first in done:
            failure = first.exception()
            if failure is None:
                continue
            if not isinstance(failure, Unavailable):
                raise failure
            log.error("startup.retry", service=name, hook=hook.__name__, message=failure.message)
            background.append(asyncio.create_task(_retried(name, hook, opened, None)))
        else:
            log.log("startup.slow", service=name, hook=hook.__name__, seconds=STARTUP_WAIT_SECONDS)
            background.append(asyncio.create_task(_retried(name, hook, opened, first)))
    return background


async def start_workers(name: str, opened: Provider) -> asyncio.Task[None]:
    """Run the provider's workers (:meth:`Provider.workers`) in the background, waiting for their start steps
    (adoption) as for a start-up hook: at most ``STARTUP_WAIT_SECONDS``, then they go on while the service
    answers. Returns their task, for the service to cancel when it stops."""
    started = asyncio.Event()
    task = asyncio.create_task(opened.workers(started.set), name=f"{name} workers")
    waiting = asyncio.ensure_future(started.wait())
    done, _ = await asyncio.wait({task, waiting}, timeout=STARTUP_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task in done:
        task.result()  # they never end by themselves: this raises what ended them
        raise RuntimeError("the workers ended")
    if not started.is_set():
        log.log("startup.slow", service=name, hook="workers", seconds=STARTUP_WAIT_SECONDS)
    return task


def provider_of(connection: HTTPConnection) -> Provider:
    """The provider opened in the service's lifespan, for a request or a websocket (a FastAPI dependency)."""
    return cast("Provider", connection.app.state.provider)


def build_service(
    name: str,
    routers: Sequence[APIRouter],
    *,
    settings: RackSettings | None = None,
    provider: Provider | None = None,
    internal: bool = True,
    tags: list[dict[str, Any]] | None = None,
    startup: Sequence[Hook] = (),
    raw_bodies: Sequence[str] = (),
    workers: bool = False,
) -> FastAPI:
    """A service app. ``startup`` runs with the opened provider before the service answers (see
    :func:`run_startup` for an engine that is down).
    ``provider`` replaces the configured one (tests pass the local one over a temporary data dir, opened here);
    ``internal=False`` drops the gateway-secret guard, for in-process tests only; ``raw_bodies`` are the
    paths (regexes) whose bodies a route streams itself, exempt from the JSON body cap. ``workers``: this
    service owns the rack's background work (:func:`start_workers`); one service of the rack (the logs
    service) does."""
    settings = settings or RackSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with provider or load_provider(settings) as opened:
            app.state.provider = opened
            app.state.settings = settings
            background = [await start_workers(name, opened)] if workers else []
            try:
                background += await run_startup(name, startup, opened)
            except BaseException:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                raise
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*background, return_exceptions=True)

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
