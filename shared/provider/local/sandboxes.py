"""Network sandboxes: why an interactive one-off starts faster than a plain ``docker run``.

Most of a container's start is its network: a veth pair, an address, and on a user-defined network (the rack's,
where ``TYPE.APP`` resolves) the embedded DNS resolver's rules. Measured on the engine here: ``docker run --rm
IMAGE true`` ~285 ms, with ``--network`` of the rack ~340 ms, joining the namespace of a container already on it
(``--network container:ID``) ~125 ms.

So a one-off joins the network namespace of a *sandbox*: a container on the rack's network that only sleeps
(as a Kubernetes pod's containers join its pause container). The one-off sees the rack's network exactly as
one of its own would (the rack's DNS, ``TYPE.APP`` names, linked services), with its own address, ports and
localhost: a sandbox serves one process at a time, and only one app (its connections' traces never meet
another app's process). An app's first run, or one that finds its sandbox in use, joins the network itself and
leaves a sandbox behind when it ends (made after the run, so that no run waits on it); a process that is gone
gives its sandbox back. Sandboxes idle for :data:`IDLE_SECONDS` are removed, as are those of a deleted app.
A one-off's hostname is its sandbox's (Docker gives a joined container the namespace owner's).

The pool is the memory of the process that serves interactive runs (the processes service): each sandbox
carries that process's runner token (``convox.runner``), and the pool removes its own idle ones when their
time is up. What a process that died leaves is the owner's: its :meth:`Sandboxes.sweep` (a loop of
:meth:`LocalProvider.workers`) removes every sandbox that no live process holds and no running container uses.

The sandbox runs ``/pause``, a static program of a few instructions (``pause(2)`` in a loop, made below) under
the engine's init, from an image imported at first need: no registry is needed. Engines on other
architectures than x86-64 run one-offs on the network directly, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import secrets
import struct
import tarfile
import time
from typing import TYPE_CHECKING, Any

from shared.errors import NotFound, RackError
from shared.logfmt import Logger
from shared.provider.local.docker import LABEL_RACK, LABEL_RUNNER, LABEL_SANDBOX, Docker
from shared.provider.local.runners import TOKEN, Runner, dead

if TYPE_CHECKING:
    from shared.provider.contract import AppsAPI

log = Logger("processes")

IDLE_SECONDS = 3600.0
PER_APP = 1
"""Idle sandboxes kept per app; a second concurrent run joins the network itself."""
PAUSE_PATH = "/pause"
PAUSE_REPO = "convox/pause"
X86_64_PAUSE = bytes.fromhex("b8 22 00 00 00  0f 05  eb f7")
"""``mov eax, 34 (pause); syscall; jmp back``: sleeps until a signal ends it (its init passes SIGTERM on)."""


def pause_program() -> bytes:
    """A static ELF executable for x86-64 Linux: one loadable segment holding the headers and the code."""
    base = 0x400000
    headers = 64 + 56
    size = headers + len(X86_64_PAUSE)
    ident = struct.pack("<4sBBBBB7x", b"\x7fELF", 2, 1, 1, 0, 0)  # 64-bit, little endian, System V
    elf = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)  # PT_LOAD, read + execute
    return elf + segment + X86_64_PAUSE


def pause_image_tar(program: bytes) -> bytes:
    """A root filesystem holding only ``/pause``, as ``docker import`` takes it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        member = tarfile.TarInfo(PAUSE_PATH.lstrip("/"))
        member.size, member.mode, member.mtime = len(program), 0o755, 0
        tar.addfile(member, io.BytesIO(program))
    return out.getvalue()


class Sandboxes:
    """The sandboxes of each app on one rack: idle ones, and those held by a process (one each)."""

    def __init__(self, docker: Docker, rack: str, network: str, apps: AppsAPI, runner: Runner) -> None:
        self.docker = docker
        self.rack = rack
        self.network = network
        self.apps = apps
        self.runner = runner
        self.idle: dict[str, list[tuple[str, float]]] = {}
        self.held: dict[str, str] = {}
        """Sandbox id -> app, while a process of this service uses it."""
        self.making: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.expiries: dict[str, asyncio.TimerHandle] = {}
        """Sandbox id -> when it is removed unless taken first (:data:`IDLE_SECONDS` after it went idle)."""
        self.image_lock = asyncio.Lock()
        self._image: str | None = None
        self._supported: bool | None = None

    def take(self, app: str) -> str | None:
        """An idle sandbox of ``app``, now the caller's alone; None when there is none."""
        pool = self.idle.get(app)
        if not pool:
            return None
        sandbox, _ = pool.pop()
        self.held[sandbox] = app
        expiry = self.expiries.pop(sandbox, None)
        if expiry is not None:
            expiry.cancel()
        return sandbox

    def give_back(self, app: str, sandbox: str) -> None:
        """A sandbox whose process is gone: idle again (or removed when the app has enough)."""
        self.held.pop(sandbox, None)
        pool = self.idle.setdefault(app, [])
        if any(s == sandbox for s, _ in pool):  # already idle (a sweep saw it before its maker gave it back)
            return
        if len(pool) < PER_APP:
            since = time.monotonic()
            pool.append((sandbox, since))
            loop = asyncio.get_running_loop()
            self.expiries[sandbox] = loop.call_later(IDLE_SECONDS, self._expire, app, sandbox, since)
        else:
            self.discard(sandbox)

    def _expire(self, app: str, sandbox: str, since: float) -> None:
        self.expiries.pop(sandbox, None)
        pool = self.idle.get(app, [])
        if (sandbox, since) in pool:
            pool.remove((sandbox, since))
            self.discard(sandbox)

    def discard(self, sandbox: str) -> None:
        """Remove a sandbox that is broken or not wanted (in the background; :meth:`sweep` removes what this
        could not)."""
        self.held.pop(sandbox, None)
        expiry = self.expiries.pop(sandbox, None)
        if expiry is not None:
            expiry.cancel()
        self._spawn(self._remove(sandbox))

    def want(self, app: str) -> None:
        """A run of ``app`` found no idle sandbox: make one for the next (in the background), unless one of the
        app's is only busy."""
        busy = app in self.held.values()
        if busy or app in self.making or self.idle.get(app) or self._supported is False:
            return
        self.making.add(app)
        self._spawn(self._make(app))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _remove(self, sandbox: str) -> None:
        with contextlib.suppress(RackError):
            await self.docker.remove(sandbox)

    async def _make(self, app: str) -> None:
        try:
            try:
                await self.apps.get(app)
            except NotFound:  # a run ended by its app's deletion leaves nothing behind
                return
            image = await self._pause_image()
            if image is None:
                return
            config = {
                "Image": image,
                "Entrypoint": [PAUSE_PATH],
                "Labels": {LABEL_RACK: self.rack, LABEL_SANDBOX: app, LABEL_RUNNER: await self.runner.holding()},
                "HostConfig": {
                    "NetworkMode": self.network,
                    "Init": True,
                    "ReadonlyRootfs": True,
                    "CapDrop": ["ALL"],  # the one-off that joins keeps its own capabilities; the sandbox needs none
                    "SecurityOpt": ["no-new-privileges"],
                    "RestartPolicy": {"Name": "unless-stopped"},
                },
            }
            name = f"{self.rack}-{app}-sandbox-{secrets.token_hex(3)}"
            with log.measure("sandbox.create", app=app) as fields:
                try:
                    created = await self.docker.run(config, name=name)
                except NotFound:
                    self._image = None  # the image went (a prune): imported again next time
                    raise
                fields["id"] = str(created["Id"])[:12]
            self.give_back(app, str(created["Id"]))
        except RackError as exc:
            log.error("sandbox.create", app=app, message=exc.message)
        finally:
            self.making.discard(app)

    async def _pause_image(self) -> str | None:
        """The pause image's tag, imported when the engine lacks it; None when the engine's architecture has
        no pause program here."""
        async with self.image_lock:
            if self._image is None and self._supported is not False:
                self._image = await self._import()
            return self._image

    async def _import(self) -> str | None:
        version = await self.docker.version()
        if version.get("Arch") != "amd64":
            self._supported = False
            log.log("sandbox.unsupported", arch=version.get("Arch"))
            return None
        program = pause_program()
        tag = f"{PAUSE_REPO}:{hashlib.sha256(program).hexdigest()[:12]}"
        try:
            await self.docker.inspect_image(tag)
        except NotFound:
            repo, _, version_tag = tag.partition(":")
            await self.docker.import_image(repo, version_tag, pause_image_tar(program), what=f"image {tag}")
            await self.docker.inspect_image(tag)
            log.log("sandbox.image", image=tag)
        self._supported = True
        return tag

    async def sweep(self, apps: set[str]) -> None:
        """The owner's round (at its start, and every few seconds): this pool's idle sandboxes past
        :data:`IDLE_SECONDS` or of deleted apps go, and so does every sandbox container of the rack that no
        running container uses and that is of a deleted app, held by no live process (its runner is dead: the
        pool that held it died with its process), or this pool's but lost from it (a failed removal). Any other
        is a live process's pool's: left to it (one it finds broken, it removes)."""
        now = time.monotonic()
        for app, pool in list(self.idle.items()):
            for sandbox, since in list(pool):
                if now - since > IDLE_SECONDS or app not in apps:
                    pool.remove((sandbox, since))
                    self.discard(sandbox)
        containers = await self.docker.containers({LABEL_RACK: self.rack}, all=True)
        used = {
            mode.removeprefix("container:")
            for c in containers
            if c.get("State") == "running" and (mode := str((c.get("HostConfig") or {}).get("NetworkMode", "")))
        }
        sandboxes: dict[str, tuple[str, str]] = {}
        for container in containers:
            labels = container.get("Labels") or {}
            owner = labels.get(LABEL_SANDBOX)
            sandbox = str(container["Id"])
            if owner is None or sandbox in used:
                continue
            token = str(labels.get(LABEL_RUNNER, ""))
            sandboxes[sandbox] = (str(owner), token if TOKEN.fullmatch(token) else "")
        gone = await dead(self.runner.root, {token for _, token in sandboxes.values()})
        mine = set(self.held) | {s for pool in self.idle.values() for s, _ in pool}  # as it is now, after the awaits
        for sandbox, (owner, token) in sandboxes.items():
            if sandbox in mine:
                continue
            if token == self.runner.token:  # this pool's, yet not in it: lost (a failed removal), or being made
                if owner not in self.making:
                    self.discard(sandbox)
            elif owner not in apps or token in gone:
                self.discard(sandbox)

    async def close(self) -> None:
        for expiry in self.expiries.values():
            expiry.cancel()
        self.expiries.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
