"""A fake provider: the seam API tests use instead of Docker and SQLite. It keeps the contract's rules
(names, duplicates, unknown apps) so that the API's rendering of them can be tested without a daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self, cast

from shared.errors import Conflict, NotFound, PayloadTooLarge
from shared.models import App, ImageStatus, Process, ProcessRunOptions, StoredObject, System
from shared.names import check_object_key
from shared.provider.contract import MAX_OBJECT_SIZE
from shared.provider.local.apps import check_name

if TYPE_CHECKING:
    from shared.provider import Provider


class FakeApps:
    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        self.on_delete: list[Callable[[str], None]] = []

    async def create(self, name: str) -> App:
        check_name(name)
        if name in self.apps or name == "convox":
            raise Conflict(f"app already exists: {name}")
        self.apps[name] = App(name=name, status="created")
        return self.apps[name]

    async def get(self, name: str) -> App:
        check_name(name)
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"no such app: {name}") from None

    async def list(self) -> list[App]:
        return sorted(self.apps.values(), key=lambda a: a.name)

    async def delete(self, name: str) -> None:
        await self.get(name)
        del self.apps[name]
        for forget in self.on_delete:
            forget(name)


class FakeSystem:
    def __init__(self) -> None:
        self.present = {"rack-local/python3:bookworm"}

    async def get(self) -> System:
        return System(name="fake", version="0", provider="fake", status="running")

    async def images(self, images: list[str]) -> list[ImageStatus]:
        return [
            ImageStatus(image=image, present=image in self.present, pullable=None if image in self.present else False)
            for image in images
        ]


class FakeProcesses:
    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.processes: dict[str, Process] = {}

    async def run(self, app: str, options: ProcessRunOptions) -> Process:
        await self.apps.get(app)
        process = Process(
            id=f"{len(self.processes):012x}",
            app=app,
            name=options.service,
            command=" ".join(options.command),
            image=options.image,
        )
        self.processes[process.id] = process
        return process

    async def list(self, app: str) -> list[Process]:
        await self.apps.get(app)
        return [p for p in self.processes.values() if p.app == app]

    async def get(self, app: str, pid: str) -> Process:
        process = self.processes.get(pid)
        if process is None or process.app != app:
            raise NotFound(f"no such process: {pid}")
        return process

    async def stop(self, app: str, pid: str) -> None:
        await self.get(app, pid)
        del self.processes[pid]


class FakeFormation:
    def __init__(self) -> None:
        self.adopted = 0

    async def adopt(self) -> None:
        self.adopted += 1


class FakeReleases:
    """Only the app environment a build's manifest is filled from (``${VAR}``); set ``env[app]`` in a test."""

    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.env: dict[str, dict[str, str]] = {}

    async def environment(self, app: str) -> dict[str, str]:
        await self.apps.get(app)
        return dict(self.env.get(app, {}))


class FakeTimers:
    def __init__(self) -> None:
        self.adopted = 0

    async def adopt(self) -> None:
        self.adopted += 1

    async def list(self, app: str) -> list[object]:
        return []


class FakeObjects:
    """Objects in memory, by the contract's rules (keys checked first, unknown apps, caps, whole replaces)."""

    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.objects: dict[tuple[str, str], bytes] = {}

    async def _checked(self, app: str, key: str) -> tuple[str, str]:
        check_object_key(key)
        await self.apps.get(app)
        return app, key

    async def store(
        self, app: str, key: str, data: AsyncIterable[bytes], max_size: int = MAX_OBJECT_SIZE
    ) -> StoredObject:
        where = await self._checked(app, key)
        received = bytearray()
        async for chunk in data:
            received += chunk
            if len(received) > max_size:
                raise PayloadTooLarge(f"object {key} is larger than {max_size} bytes")
        self.objects[where] = bytes(received)
        return StoredObject(app=app, key=key, size=len(received), url=f"memory://{app}/{key}")

    async def fetch(self, app: str, key: str) -> AsyncIterator[bytes]:
        data = self.objects.get(await self._checked(app, key))
        if data is None:
            raise NotFound(f"no such object: {key}")

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return chunks()

    async def exists(self, app: str, key: str) -> bool:
        return await self._checked(app, key) in self.objects

    async def delete(self, app: str, key: str) -> None:
        if self.objects.pop(await self._checked(app, key), None) is None:
            raise NotFound(f"no such object: {key}")

    def forget(self, app: str) -> None:
        for where in [where for where in self.objects if where[0] == app]:
            del self.objects[where]


class FakeProvider:
    name = "fake"

    def __init__(self) -> None:
        self.apps = FakeApps()
        self.system = FakeSystem()
        self.processes = FakeProcesses(self.apps)
        self.formation = FakeFormation()
        self.releases = FakeReleases(self.apps)
        self.timers = FakeTimers()
        self.objects = FakeObjects(self.apps)
        self.apps.on_delete.append(self.objects.forget)
        self.opened = False
        self.workers_started = 0

    async def workers(self, started: Callable[[], None] | None = None) -> None:
        """The start steps of the local provider's workers, then nothing until cancelled."""
        self.workers_started += 1
        await self.formation.adopt()
        await self.timers.adopt()
        if started is not None:
            started()
        await asyncio.Event().wait()

    async def __aenter__(self) -> Self:
        self.opened = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.opened = False


def as_provider(fake: object) -> Provider:
    """A fake given where the contract is expected. The fakes here implement only the sub-APIs that the API
    tests reach (apps, system, processes, formation, releases, timers, objects); a route that needs another fails
    loudly with AttributeError, which is the point of a narrow fake."""
    return cast("Provider", fake)
