"""AWS clients (aioboto3, imported here lazily) and the translation of vendor errors into shared.errors.

One client per AWS service, made when first used and closed with the provider. Nothing outside this
package sees botocore: :func:`translated` turns a ``ClientError`` into the rack's own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable

NOT_FOUND = {
    "ResourceNotFoundException",
    "NoSuchKey",
    "NoSuchBucket",
    "ClusterNotFoundException",
    "ServiceNotFoundException",
    "RepositoryNotFoundException",
    "ParameterNotFound",
    "NotFoundException",
    "404",
}
CONFLICT = {
    "ConditionalCheckFailedException",
    "TransactionCanceledException",
    "ResourceAlreadyExistsException",
    "ResourceInUseException",
    "PreconditionFailed",
    "BucketAlreadyOwnedByYou",
}
BAD_REQUEST = {"ValidationException", "InvalidParameterException", "InvalidParameterValueException", "ClientException"}
THROTTLED = {"ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded", "SlowDown"}


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(exc: BaseException, what: str) -> RackError:
    """The rack's error for a vendor error about ``what`` (a phrase such as ``no such app: web``)."""
    code = error_code(exc)
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or str(exc)
    if code in NOT_FOUND:
        return NotFound(what)
    if code in CONFLICT:
        return Conflict(what)
    if code in BAD_REQUEST:
        return BadRequest(f"{what}: {message}")
    if code in THROTTLED:
        return Unavailable(f"AWS is throttling the rack ({code}); try again")
    return Unavailable(f"AWS error{' ' + code if code else ''}: {message}")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Vendor errors inside the block become :func:`translate`'s error; the rack's own pass through."""
    try:
        yield
    except RackError:
        raise
    except Exception as exc:
        if not error_code(exc) and type(exc).__module__.split(".")[0] not in {"botocore", "aiobotocore"}:
            raise
        raise translate(exc, what) from exc


class Clients:
    """The provider's AWS clients, one per service, opened on first use and closed together."""

    def __init__(self, region: str = "") -> None:
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._lock = asyncio.Lock()

    async def get(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is not None:
            return client
        async with self._lock:
            client = self._clients.get(service)
            if client is not None:
                return client
            if self._session is None:
                import aioboto3  # lazily: only a provider that talks to AWS pays for the import

                self._session = aioboto3.Session(region_name=self.region)
            from botocore.config import Config

            config = Config(retries={"max_attempts": 8, "mode": "adaptive"})
            if service == "s3":  # SigV4 everywhere, presigned URLs too (SigV2 is refused outside the oldest regions)
                config = config.merge(Config(signature_version="s3v4"))
            client = await self._stack.enter_async_context(self._session.client(service, config=config))
            self._clients[service] = client
        return client

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()
