"""The gateway: the rack's only public listener. Auth, routing to the services, websockets passed through to
them unread, one merged OpenAPI document and Swagger UI served from local assets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request, WebSocket
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.access import AccessRequest, issue_access
from services.gateway.auth import RequireAccess
from services.gateway.handoff import RAW
from services.gateway.openapi import merged
from services.gateway.proxy import Upstreams, not_routed
from services.gateway.routing import service_for
from shared import __version__
from shared.http import CleanPath, install_error_handlers
from shared.logfmt import Logger, Quoted
from shared.rawhttp import RAW as RAW_STREAM
from shared.rawstream import wants_raw

log = Logger("gateway")
ASSETS = Path(fastapi_offline.__file__).parent / "static"


class RequestLog:
    """One logfmt line per request: ``ns=gateway at=request state=success status=200 method="GET" ...``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif message["type"] == "websocket.accept":
                status = 101
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            extensions = scope.get("extensions") or {}
            status = (extensions.get(RAW) or extensions.get(RAW_STREAM) or {}).get("status", status)
            elapsed = (time.perf_counter() - start) * 1000
            method = "WS" if scope["type"] == "websocket" else scope["method"]
            state = "success" if 0 < status < 400 else "error"
            log.log(
                "request",
                state=state,
                status=status or 500,
                method=Quoted(method),
                path=Quoted(scope["path"]),
                elapsed=elapsed,
            )


def create_app(password: str, upstreams: Upstreams, token_key: bytes) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await upstreams.close()

    app = FastAPI(
        title="Convox Rack API", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    install_error_handlers(app, log)
    app.mount("/docs/assets", StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/check", include_in_schema=False)
    async def check() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(await merged(upstreams.get_json))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Convox Rack API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_ui_parameters={"persistAuthorization": False, "displayOperationId": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.post("/system/access", include_in_schema=False)
    async def access(request: Request, body: AccessRequest) -> JSONResponse:
        return issue_access(request, body, token_key)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.api_route("/{path:path}", methods=methods, include_in_schema=False)
    async def proxy(request: Request) -> Response:
        service = service_for(request.url.path)
        if service is None:
            raise not_routed(request.url.path)
        if wants_raw(request.headers):
            return await upstreams.hand_over_raw(service, request)
        return await upstreams.forward(service, request)

    @app.websocket("/{path:path}")
    async def relay(websocket: WebSocket) -> None:
        service = service_for(websocket.url.path)
        if service is None:
            await websocket.send_denial_response(
                JSONResponse({"error": f"no such route: {websocket.url.path}"}, status_code=404)
            )
            return
        await upstreams.pass_through(service, websocket)

    app.add_middleware(CleanPath)
    app.add_middleware(RequireAccess, password=password, token_key=token_key)
    app.add_middleware(RequestLog)
    return app


def load_password(data_dir: Path) -> str:
    return (data_dir / "password").read_text().strip()


__all__: list[Any] = ["create_app", "load_password"]
