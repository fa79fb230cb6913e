"""A test double of the backing services' transfers alone: ``ResourcesAPI.export`` and ``ResourcesAPI.import_``
put over the real local provider's resources (:func:`DumpTransfers.install`), everything else (the services,
their names, the refusal of an unknown one) left to the real provider.

What it simulates: the dump tool of a service, which the real provider cannot be made to misbehave on demand.
An export yields ``dump`` (then fails with ``fail``, if set, as a tool exiting with an error does); an import
records what it read and how it ended, refuses a second import into the same service at once (as the real
one does), and waits on ``hold`` after each chunk, so that a test can keep one under way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable

import pytest

from shared.errors import Conflict, RackError
from shared.provider import Provider


class DumpTransfers:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.dump = [b"CREATE TABLE t;\n", b"x" * 100_000]
        self.fail: str | None = None
        self.loaded = bytearray()
        self.ended = ""
        self.importing: set[str] = set()
        self.hold = asyncio.Event()
        self.hold.set()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """In place of the real provider's export and import, until the test ends."""
        monkeypatch.setattr(self.provider.resources, "export", self.export)
        monkeypatch.setattr(self.provider.resources, "import_", self.import_)

    async def export(self, name: str) -> AsyncGenerator[bytes]:
        await self.provider.resources.get(name)

        async def chunks() -> AsyncGenerator[bytes]:
            for chunk in self.dump:
                yield chunk
            if self.fail:
                raise RackError(self.fail, status=502)

        return chunks()

    async def import_(self, name: str, dump: AsyncIterable[bytes]) -> None:
        await self.provider.resources.get(name)
        if name in self.importing:
            raise Conflict(f"an import into {name} is under way: wait for it to end")
        self.importing.add(name)
        try:
            async for chunk in dump:
                self.loaded += chunk
                await self.hold.wait()
        except BaseException as exc:
            self.ended = type(exc).__name__
            raise
        finally:
            self.importing.discard(name)
        self.ended = "loaded"
