"""What every FastAPI app of the rack shares: errors as ``{"error": ...}``, the internal-secret guard,
``/check``, a clean OpenAPI document and a uvicorn runner on a unix socket."""

from __future__ import annotations

import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RackError
from shared.logfmt import Logger
from shared.models import Error

Responses = dict[int | str, dict[str, Any]]


def error_response(status: int, description: str) -> Responses:
    """An error answer for a route's OpenAPI ``responses``: ``{"error": ...}`` with ``status``."""
    return {status: {"model": Error, "description": description}}


BAD_INPUT = error_response(400, "Bad input")
ENGINE_UNAVAILABLE = error_response(
    503, "The container engine is unreachable or did not answer in time (`docker engine unreachable: ...`)"
)
"""Every route that reaches the engine can answer this; the rack keeps answering the others meanwhile."""


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = tuple(err.get("loc", ()))
        if where[:1] == ("path",) and err.get("type") in ("string_pattern_mismatch", "string_too_long"):
            parts.append(f"invalid {'.'.join(str(p) for p in where[1:])}: {err.get('input')!r}")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and err.get("type") != "value_error" else msg)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, log: Logger) -> None:
    async def rack_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RackError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONResponse({"error": message.lower()}, status_code=exc.status_code, headers=exc.headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("unhandled", id=error_id, error=type(exc).__name__)
        return JSONResponse({"error": f"internal error (id {error_id})"}, status_code=500)

    app.add_exception_handler(RackError, rack_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


async def deny(
    scope: Scope, receive: Receive, send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Refuse an HTTP request or a websocket handshake with ``{"error": message}``."""
    body = error_body(message)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message})


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CleanPath:
    """Refuses (400) a request whose decoded path holds a control character: no name has one, and the router's
    patterns would take ``/apps/myapp%0A`` for ``/apps/myapp`` (``$`` matches before a final newline)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and CONTROL.search(scope["path"]):
            await deny(scope, receive, send, 400, f"invalid path: {scope['path']!r} (a control character)")
            return
        await self.app(scope, receive, send)


MAX_BODY = 1024 * 1024
"""The largest request body of a JSON route (an upload route streams its own, under its own cap)."""


class BodyLimit:
    """Refuses (413) a request body over ``limit`` bytes, before any handler reads it; a body within the limit
    is read here and handed on whole. Paths matching ``exempt`` (uploads, which stream) pass untouched."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, exempt: Sequence[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = [re.compile(p) for p in exempt]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(p.fullmatch(scope["path"]) for p in self.exempt):
            await self.app(scope, receive, send)
            return
        too_large = f"request body larger than {self.limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await deny(scope, receive, send, 400, "bad content-length")
                return
            if int(declared) > self.limit:
                await deny(scope, receive, send, 413, too_large)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await deny(scope, receive, send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InternalOnly:
    """Refuses every request that does not carry the gateway's per-start secret."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            token = dict(scope["headers"]).get(b"x-rack-internal", b"")
            if not self.secret or not hmac.compare_digest(token, self.secret):
                await deny(scope, receive, send, 403, "forbidden: internal service")
                return
        await self.app(scope, receive, send)


def operation_ids(route: APIRoute) -> str:
    """Operation ids are the route names (``app_list``): stable, and what generators name methods by."""
    return route.name


def clean_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """An OpenAPI document without FastAPI's 422 answers (the rack answers bad input with 400)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes, tags=app.openapi_tags)
        for item in schema.get("paths", {}).values():
            for op in item.values():
                op.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    return build


def create_service_app(
    name: str,
    *,
    version: str,
    lifespan: Callable[[FastAPI], Any] | None = None,
    tags: list[dict[str, Any]] | None = None,
    secret: str | None = None,
    raw_bodies: Sequence[str] = (),
) -> FastAPI:
    """A FastAPI app for one of the rack's services, with the shared error shape and ``GET /check``. Request
    bodies are capped (:class:`BodyLimit`) but on paths matching ``raw_bodies`` (uploads)."""
    app = FastAPI(
        title=f"rack {name}",
        version=version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=tags,
        generate_unique_id_function=operation_ids,
    )
    install_error_handlers(app, Logger(name))
    app.openapi = clean_openapi(app)  # type: ignore[method-assign]

    @app.get("/check", include_in_schema=False)
    async def check() -> dict[str, str]:
        return {"status": "ok", "service": name}

    app.add_middleware(BodyLimit, exempt=raw_bodies)
    app.add_middleware(CleanPath)
    if secret is not None:
        app.add_middleware(InternalOnly, secret=secret)
    return app


AsgiCallable = Callable[[Scope, Receive, Send], Awaitable[None]]
