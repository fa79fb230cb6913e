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
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from shared.manifest import Manifest
from shared.models import (
    App,
    Build,
    BuildOptions,
    Formation,
    FormationUpdate,
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
    async def create(self, app: str, context: Path, manifest: Manifest, options: BuildOptions) -> Build:
        """Record a build of the source tree at ``context`` (already extracted safely, its manifest parsed)
        and start building it in the background; the provider owns ``context`` from here on. A build that
        completes makes a release (not promoted); one that fails makes none."""
        ...

    async def get(self, app: str, build_id: str) -> Build: ...
    async def list(self, app: str, limit: int = 20) -> list[Build]: ...

    def logs(self, app: str, build_id: str, follow: bool = True) -> AsyncIterator[bytes]:
        """The build's output so far, then (``follow``) what it writes until it ends."""
        ...


class ReleasesAPI(Protocol):
    async def create(
        self, app: str, *, build: str | None = None, env: dict[str, str] | None = None, description: str = ""
    ) -> Release:
        """A new release; what is not given is copied from the app's latest release."""
        ...

    async def get(self, app: str, release_id: str) -> Release: ...
    async def environment(self, app: str) -> dict[str, str]:
        """The environment of the app's latest release (``{}`` before the first)."""
        ...

    async def promote(self, app: str, release_id: str) -> App:
        """Start rolling the release out; the app is ``updating`` until it is ``running`` or ``failed``."""
        ...

    async def list(self, app: str, limit: int = 20) -> list[Release]: ...


class FormationAPI(Protocol):
    async def get(self, app: str) -> list[Formation]: ...
    async def scale(self, app: str, service: str, update: FormationUpdate) -> Formation: ...

    async def adopt(self) -> None:
        """Take charge of what runs after a (re)start of the rack: adopt running processes, serve the
        balancers, keep the counts. Called once by the service that owns formation."""
        ...


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
    builds: BuildsAPI
    releases: ReleasesAPI
    formation: FormationAPI

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
