"""One error hierarchy for the whole rack; every error carries its HTTP status."""

from __future__ import annotations


class RackError(Exception):
    """An error a client may see: rendered as ``{"error": message}`` with ``status``."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(RackError):
    status = 400


class Unauthorized(RackError):
    status = 401


class Forbidden(RackError):
    status = 403


class NotFound(RackError):
    status = 404


class Conflict(RackError):
    status = 409


class PayloadTooLarge(RackError):
    status = 413


class Unavailable(RackError):
    status = 503


class TooManyRequests(RackError):
    status = 429
