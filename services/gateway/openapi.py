"""One OpenAPI document for the whole rack, merged from every service's own."""

from __future__ import annotations

import asyncio
from typing import Any

from services.gateway.access import ACCESS_PATH, error
from shared import __version__
from shared.config import SERVICES
from shared.errors import RackError
from shared.http import MAX_BODY

GATEWAY_PATHS: dict[str, Any] = {
    "/check": {
        "get": {
            "operationId": "check",
            "summary": "Health check (no password needed)",
            "tags": ["system"],
            "security": [],
            "responses": {
                "200": {
                    "description": "The rack answers",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"type": "string"}},
                                "required": ["status"],
                            }
                        }
                    },
                }
            },
        }
    },
    "/system/access": ACCESS_PATH,
}

DESCRIPTION = f"""The rack's API. Every route except `GET /check` needs the rack password as HTTP Basic
authentication (any user name), or an access token from `POST /system/access` in its place (a `read` token
gets 403 from every route that changes anything, websockets included; an expired one 401); a builder's
report takes its build's own token (`X-Build-Token`) and nothing else. A websocket
handshake or a request other than GET/HEAD/OPTIONS whose `Origin` is not the rack's own is refused with 403.
Errors are `{{"error": "message"}}` with a 4xx or 5xx status. A JSON request body is at most
{MAX_BODY // 1024} KiB (413 beyond); path parameters are checked against their patterns (400)."""


def document_errors(method: str, operation: dict[str, Any]) -> None:
    """Add the answers the gateway and every service give to any operation: 401 (no or a wrong password or
    token), 403 (a read token on a route that changes something, a request from another site's page), 503
    (the service is down), 400 (bad parameters or body), 413 (a body over the cap). What the operation
    documents itself is kept."""
    responses = operation.setdefault("responses", {})
    if operation.get("security") == []:
        return
    added = {
        "401": error("No password or token, a wrong one, or an expired token"),
        "403": error("A read token on a route that changes something, or a request from another site's page"),
        "503": error("The service is unavailable"),
    }
    if operation.get("parameters") or operation.get("requestBody"):
        added["400"] = error("Bad input")
    if any(p.get("in") == "path" for p in operation.get("parameters") or []):
        added["404"] = error("No such app, or no such object named in the path")
    if operation.get("requestBody"):
        added["413"] = error("The request body is too large")
    for status, response in added.items():
        responses.setdefault(status, response)


def merge(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge service documents; a path, operationId or schema defined twice differently is an error."""
    paths: dict[str, Any] = dict(GATEWAY_PATHS)
    schemas: dict[str, Any] = {}
    tags: dict[str, dict[str, Any]] = {}
    operation_ids = {"check": "gateway", "access_create": "gateway"}
    document_errors("post", ACCESS_PATH["post"])
    for service, doc in documents.items():
        for path, item in doc.get("paths", {}).items():
            if path in paths:
                raise RackError(f"openapi: path {path} is served by two services")
            for method, operation in item.items():
                document_errors(method, operation)
                op_id = operation.get("operationId")
                if op_id in operation_ids:
                    raise RackError(f"openapi: operationId {op_id} in {service} and {operation_ids[op_id]}")
                operation_ids[op_id] = service
            paths[path] = item
        for name, schema in doc.get("components", {}).get("schemas", {}).items():
            if name in schemas and schemas[name] != schema:
                raise RackError(f"openapi: schema {name} differs between services")
            schemas[name] = schema
        for tag in doc.get("tags", []):
            tags.setdefault(tag["name"], tag)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Convox Rack API", "version": __version__, "description": DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "buildToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Build-Token",
                    "description": "The token a builder task was given for its one build (builders' reports only).",
                },
            },
        },
        "security": [{"basic": []}],
        "tags": list(tags.values()),
    }


async def merged(fetch: Any) -> dict[str, Any]:
    """``fetch(service, path)`` returns a service's JSON; every service must answer."""
    docs = await asyncio.gather(*(fetch(service, "/openapi.json") for service in SERVICES))
    return merge(dict(zip(SERVICES, docs, strict=True)))
