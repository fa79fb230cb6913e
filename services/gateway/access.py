"""``POST /system/access``: a scoped, expiring token for CI and scripts (`convox rack access`), made by the
gateway itself since it alone holds the signing key. Only the rack password may make one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.auth import ACCESS_KEY, ADMIN
from services.gateway.tokens import Role, issue, parse_duration
from shared.errors import RackError
from shared.logfmt import Logger
from shared.protocol import AccessToken

log = Logger("gateway")


class AccessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="`read` (GET and log follows only) or `write` (everything but making tokens)")
    duration: str = Field("1h", max_length=32, description="How long the token is valid: `30m`, `1h`, `7d`...")


def issue_access(request: Request, body: AccessRequest, key: bytes) -> JSONResponse:
    if request.scope.get("state", {}).get(ACCESS_KEY) != ADMIN:
        raise RackError("only the rack password can create access tokens", 403)
    try:
        seconds = parse_duration(body.duration)
    except ValueError as exc:
        raise RackError(str(exc), 400) from None
    token, claims = issue(key, body.role, seconds)
    expires = datetime.fromtimestamp(claims.expires, UTC).isoformat()
    log.log("access.create", state="success", role=body.role, id=claims.id, expires=expires)
    return JSONResponse(dict(AccessToken(token=token, role=body.role, expires=expires)), status_code=201)


def error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


ACCESS_PATH: dict[str, Any] = {
    "post": {
        "operationId": "access_create",
        "summary": "Create a scoped, expiring access token (only with the rack password)",
        "description": "The token is given instead of the password: HTTP Basic with any user name (e.g. `jwt`) "
        "or `Authorization: Bearer`. A `read` token may only read (GET, and the log, build-log and metrics "
        "websockets); a `write` token may do everything but create tokens. An expired token gets 401.",
        "tags": ["system"],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ["read", "write"]},
                            "duration": {"type": "string", "default": "1h", "maxLength": 32},
                        },
                        "required": ["role"],
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "201": {
                "description": "The token",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "token": {"type": "string"},
                                "role": {"type": "string", "enum": ["read", "write"]},
                                "expires": {"type": "string", "format": "date-time"},
                            },
                            "required": ["token", "role", "expires"],
                        }
                    }
                },
            },
            "400": error("Invalid role or duration"),
        },
    }
}
