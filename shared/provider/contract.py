"""The provider contract: one interface, resource by resource, implemented by `local` and `aws`.

Services depend on these protocols only; aiodocker and aioboto3 stay inside their providers, which also
translate vendor errors into :mod:`shared.errors`. Method names are resource-then-verb, read through a
sub-API per resource (``provider.apps.create(name)``), the way aiodocker groups its API.

Every resource of the rack has its protocol here. A protocol joins :class:`Provider` once a provider
implementation serves it; until then the protocol fixes its shape so that both providers can fit it
(ids are strings, streams are async iterators, options are pydantic models with optional fields).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from shared.models import (
    App,
    Build,
    Formation,
    LogEntry,
    Process,
    ProcessRunOptions,
    Release,
    Resource,
    System,
)


class AppsAPI(Protocol):
    async def create(self, name: str) -> App: ...
    async def get(self, name: str) -> App: ...
    async def list(self) -> list[App]: ...
    async def delete(self, name: str) -> None: ...


class SystemAPI(Protocol):
    async def get(self) -> System: ...


class ProcessesAPI(Protocol):
    """Containers (local) or tasks (aws) of an app; a pid is only found through its own app."""

    async def run(self, app: str, options: ProcessRunOptions) -> Process: ...
    async def list(self, app: str) -> list[Process]: ...
    async def get(self, app: str, pid: str) -> Process: ...
    async def stop(self, app: str, pid: str) -> None: ...


class BuildsAPI(Protocol):
    async def create(self, app: str, source: AsyncIterator[bytes], description: str) -> Build: ...
    async def get(self, app: str, build_id: str) -> Build: ...
    async def list(self, app: str) -> list[Build]: ...
    def logs(self, app: str, build_id: str) -> AsyncIterator[bytes]: ...


class ReleasesAPI(Protocol):
    async def create(self, app: str, build: str | None = None, env: dict[str, str] | None = None) -> Release: ...
    async def get(self, app: str, release_id: str) -> Release: ...
    async def formation(self, app: str) -> list[Formation]: ...
    async def promote(self, app: str, release_id: str) -> None: ...
    async def list(self, app: str) -> list[Release]: ...


class LogsAPI(Protocol):
    def app(self, app: str, since: datetime | None, follow: bool) -> AsyncIterator[LogEntry]: ...


class ResourcesAPI(Protocol):
    async def create(self, kind: str, name: str) -> Resource: ...
    async def get(self, name: str) -> Resource: ...
    async def list(self) -> list[Resource]: ...
    async def delete(self, name: str) -> None: ...
    async def link(self, name: str, app: str) -> Resource: ...
    async def unlink(self, name: str, app: str) -> Resource: ...


class Provider(Protocol):
    """A provider, opened as an async context manager in a service's lifespan."""

    name: str
    apps: AppsAPI
    system: SystemAPI
    processes: ProcessesAPI

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
