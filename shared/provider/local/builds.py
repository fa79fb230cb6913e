"""Builds on the local provider: records in SQLite, logs under ``DATA/builds``, images on the Docker Engine.

A build runs in a background task of the process that created it (the builds service): status ``created``
then ``running``, then ``complete`` with a release, or ``failed`` with an error and no release. Its output
goes to ``DATA/builds/ID.log`` as it comes; followers in the same process are woken on every write, and
followers elsewhere poll the file. The process that runs builds holds its runner lock
(:class:`shared.provider.local.runners.Runner`) and records its token in each build's row (``runner``); the
owner of the background work (:meth:`LocalProvider.workers`, loop ``builds.expire``) marks failed, within
:data:`EXPIRE_INTERVAL`, every unfinished build whose runner died (``kill -9`` included).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import aiosqlite
from pydantic import ValidationError

from shared.archive import extract, pack
from shared.errors import NotFound, RackError
from shared.ids import build_id
from shared.logfmt import Logger
from shared.manifest import Manifest
from shared.models import Build, BuildOptions, ResourceEnv
from shared.names import is_id, is_under, under
from shared.provider.contract import AppsAPI, ReleasesAPI, ResourceHook
from shared.provider.local.docker import Docker
from shared.provider.local.images import image_name
from shared.provider.local.objects import LocalObjects
from shared.provider.local.runners import Runner, dead
from shared.provider.local.state import State

log = Logger("builds")
READ_CHUNK = 64 * 1024
POLL_INTERVAL = 0.5
EXPIRE_INTERVAL = 0.5
"""Seconds between the owner's looks for builds whose runner died."""
RESTARTED = "the builds service stopped while it ran (restarted)"
STOPPED = "rack stopped during the build"
MAX_MEMBERS = 10_000_000
"""A bound on the members of a source extracted here (the builds service's own cap is tighter)."""


UNFINISHED = "status IN ('created', 'running') OR (status = 'complete' AND release = '')"
"""The builds that have not ended (the partial index ``builds_unfinished`` covers exactly these)."""


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def to_build(row: aiosqlite.Row) -> Build:
    # The row says ``complete`` a moment before its release exists (the release needs a complete build):
    # until then it is still running to anyone who reads it, so no reader sees a complete build without one.
    status = "running" if row["status"] == "complete" and not row["release"] else row["status"]
    return Build(
        id=row["id"],
        app=row["app"],
        status=status,
        description=row["description"],
        manifest=row["manifest"],
        release=row["release"],
        error=row["error"],
        started=_time(row["started"]),
        ended=_time(row["ended"]) if status != "running" else None,
    )


class LiveLog:
    """The log file of a build running in this process, and the followers waiting for its next write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        self.done = False
        self._handle: IO[bytes] | None = None
        self._changed = asyncio.Condition()

    async def open(self) -> None:
        self._handle = await asyncio.to_thread(open, self.path, "ab", buffering=0)

    async def write(self, data: bytes) -> None:
        if self._handle is not None and data:
            await asyncio.to_thread(self._handle.write, data)
            await self._bump()

    async def finish(self) -> None:
        if self._handle is not None:
            await asyncio.to_thread(self._handle.close)
            self._handle = None
        self.done = True
        await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def wait(self, seen: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.version != seen or self.done)


def _read(path: Path, offset: int, size: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(size)
    except FileNotFoundError:
        return b""


def _append(path: Path, text: str) -> None:
    with path.open("ab") as handle:
        handle.write(text.encode())


def _forget(log_path: Path, work: Path) -> bool:
    """Remove a build's log and what is left of its work directory; whether there was a log."""
    shutil.rmtree(work, ignore_errors=True)
    try:
        log_path.unlink()
    except FileNotFoundError:
        return False
    return True


def _pack_context(directory: Path, out: Path, dockerfile: str) -> None:
    with out.open("wb") as handle:
        pack(directory, handle, compress=False, keep=[dockerfile, ".dockerignore"])


def checked_id(build: str) -> str:
    """A build id (from a row or a request) before it becomes a path."""
    if not is_id(build):
        raise NotFound(f"no such build: {build}")
    return build


class LocalBuilds:
    def __init__(
        self,
        state: State,
        docker: Docker,
        apps: AppsAPI,
        releases: ReleasesAPI,
        rack: str,
        data_dir: Path,
        objects: LocalObjects | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.state = state
        self.runner = runner or Runner(data_dir / "runners")
        """Held while this process runs builds: its token is in their rows, for the owner to fail them if
        this process dies."""
        self.objects = objects or LocalObjects(apps, data_dir)
        self.docker = docker
        self.apps = apps
        self.releases = releases
        self.rack = rack
        self.dir = data_dir / "builds"
        self._live: dict[str, LiveLog] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._resources: ResourceHook | None = None

    def link_resources(self, hook: ResourceHook) -> None:
        self._resources = hook

    def log_path(self, build: str) -> Path:
        return under(self.dir, f"{checked_id(build)}.log")

    def work_dir(self, build: str) -> Path:
        return under(self.dir, checked_id(build))

    # ---- records -------------------------------------------------------------------------------

    async def get(self, app: str, build_id: str) -> Build:
        row = await self.state.fetch_one("SELECT * FROM builds WHERE id = ? AND app = ?", (build_id, app))
        if row is None:
            await self.apps.get(app)
            raise NotFound(f"no such build: {build_id}")
        return to_build(row)

    async def list(self, app: str, limit: int = 20) -> list[Build]:
        await self.apps.get(app)
        rows = await self.state.fetch_all(
            "SELECT * FROM builds WHERE app = ? ORDER BY created DESC, rowid DESC LIMIT ?", (app, max(1, limit))
        )
        return [to_build(row) for row in rows]

    async def running(self) -> int:
        row = await self.state.fetch_one("SELECT COUNT(*) AS n FROM builds WHERE status IN ('created', 'running')")
        return int(row["n"]) if row is not None else 0

    async def _set(self, build: str, **fields: str) -> None:
        assignments = ", ".join(f"{key} = ?" for key in fields)
        await self.state.execute(f"UPDATE builds SET {assignments} WHERE id = ?", (*fields.values(), build))

    # ---- creating and running ------------------------------------------------------------------

    async def create(self, app: str, source: str, manifest: Manifest, options: BuildOptions) -> Build:
        """Record the build of the app's object ``source`` and start it in the background, which extracts the
        object (safely) under ``DATA/builds/ID`` and then deletes it."""
        if not await self.objects.exists(app, source):  # BadRequest, NotFound (app) before it
            raise NotFound(f"no such object: {source}")
        build = build_id()
        work = self.work_dir(build)
        try:
            token = await asyncio.to_thread(self.runner.hold)
            await asyncio.to_thread(work.mkdir, parents=True, mode=0o700)
            await self.state.execute(
                "INSERT INTO builds (id, app, status, description, manifest, created, runner)"
                " VALUES (?, ?, 'created', ?, ?, ?, ?)",
                (build, app, options.description, manifest.model_dump_json(), _now(), token),
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        live = LiveLog(self.log_path(build))
        self._live[build] = live
        task = asyncio.create_task(self._run(app, build, source, work, manifest, options, live), name=f"build {build}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.log("build.create", app=app, build=build, services=len(manifest.services))
        return await self.get(app, build)

    async def _extract(self, app: str, source: str, work: Path) -> None:
        """The object ``source`` extracted into ``work/source`` (read in place: it is this provider's file),
        then deleted. The paths of its members are checked here (:func:`shared.archive.extract`); its sizes
        were capped by whoever stored it (the builds service, under its settings)."""
        archive = await self.objects.path(app, source)
        try:
            await asyncio.to_thread(extract, archive, work / "source", max_size=None, max_members=MAX_MEMBERS)
        except FileNotFoundError:
            raise NotFound(f"no such object: {source}") from None
        finally:
            with contextlib.suppress(NotFound):
                await self.objects.delete(app, source)

    async def _run(
        self,
        app: str,
        build: str,
        source: str,
        work: Path,
        manifest: Manifest,
        options: BuildOptions,
        live: LiveLog,
    ) -> None:
        started = asyncio.get_running_loop().time()
        error = ""
        try:
            await live.open()
            await self._set(build, status="running", started=_now())
            await self._extract(app, source, work)
            await self._build_images(app, build, work / "source", manifest, options, live)
            env = await self._resource_env(app, manifest, live)
            await live.write(b"Creating release... ")
            await self._set(build, status="complete", ended=_now())
            release = await self.releases.create(
                app, build=build, description=options.description, set=env.set, unset=env.unset
            )
            await self._set(build, release=release.id)
            await live.write(f"OK\nBuild {build} complete: release {release.id}\n".encode())
        except asyncio.CancelledError:
            error = STOPPED
            await self._fail(build, error, live)
            raise
        except RackError as exc:
            error = exc.message
            await self._fail(build, error, live)
        except Exception as exc:
            error = f"internal error ({type(exc).__name__})"
            log.error("build.run", app=app, build=build, error=type(exc).__name__)
            await self._fail(build, error, live)
        finally:
            await live.finish()
            self._live.pop(build, None)
            await asyncio.to_thread(shutil.rmtree, work, True)
            elapsed = (asyncio.get_running_loop().time() - started) * 1000
            log.log("build.run", app=app, build=build, state="error" if error else "success", elapsed=elapsed)

    async def _resource_env(self, app: str, manifest: Manifest, live: LiveLog) -> ResourceEnv:
        """The manifest's resources, ready and linked (each made once, kept across deploys): their URLs."""
        if self._resources is None:
            return ResourceEnv()
        names = ", ".join(f"{name} ({spec.type})" for name, spec in sorted(manifest.resources.items()))
        if names:
            await live.write(f"Resources {names}... ".encode())
        env = await self._resources(app, manifest)
        if names:
            await live.write(b"OK\n")
        if env.unset:
            await live.write(f"Unlinked {', '.join(env.unset)} (the services and their data stay)\n".encode())
        return env

    async def _fail(self, build: str, error: str, live: LiveLog) -> None:
        with contextlib.suppress(Exception):
            await live.write(f"\nBuild failed: {error}\n".encode())
        with contextlib.suppress(Exception):
            await self._set(build, status="failed", error=error, release="", ended=_now())

    async def _build_images(
        self, app: str, build: str, source: Path, manifest: Manifest, options: BuildOptions, live: LiveLog
    ) -> None:
        if not manifest.services:
            raise RackError("the manifest has no services", status=400)
        env = await self.releases.environment(app)
        for name, service in manifest.services.items():
            if service.build is None:
                await live.write(f"Service {name} runs image {service.image}: nothing to build\n".encode())
                continue
            spec = service.build
            directory = source / posixpath.normpath(spec.path)
            if not is_under(source, directory, or_root=True):  # the manifest refuses it; a link could lead out
                raise RackError(f"{name}: build path {spec.path!r} leads out of the source", status=400)
            tag = image_name(self.rack, app, name, build)
            await live.write(f"Building {name} ({spec.path}, {spec.manifest}) as {tag}\n".encode())
            context = under(source.parent, f"context-{name}.tar")
            await asyncio.to_thread(_pack_context, directory, context, spec.manifest)
            try:
                async for text in self.docker.build(
                    context,
                    tag=tag,
                    dockerfile=spec.manifest,
                    buildargs={**{key: env[key] for key in spec.required_args if key in env}, **spec.args},
                    nocache=options.no_cache,
                ):
                    await live.write(text.encode("utf-8", "replace"))
                brought = {key: value for key, value in (await self.docker.image_labels(tag)).items() if value}
                if brought:  # the rack's labels from a base image or a LABEL: built again (cached) without them
                    names = ", ".join(sorted(brought))
                    await live.write(f"Dropping the rack's labels the image brings: {names}\n".encode())
                    cleared = dict.fromkeys(brought, "")
                    async for _ in self.docker.build(
                        context, tag=tag, dockerfile=spec.manifest, buildargs=spec.args, labels=cleared
                    ):
                        pass
            except RackError as exc:
                raise RackError(f"{name}: {exc.message}", status=exc.status) from None
            finally:
                await asyncio.to_thread(context.unlink, True)

    # ---- logs ----------------------------------------------------------------------------------

    async def logs(self, app: str, build_id: str, follow: bool = True) -> AsyncIterator[bytes]:
        """The log so far; with ``follow``, then what the build writes until it ends."""
        await self.get(app, build_id)
        path = self.log_path(build_id)
        offset = 0
        while True:
            live = self._live.get(build_id)
            seen = live.version if live else 0
            while data := await asyncio.to_thread(_read, path, offset, READ_CHUNK):
                offset += len(data)
                yield data
            if not follow:
                return
            if live is not None:
                if live.done:  # every write happened before: one last read, and the record says it ended
                    while data := await asyncio.to_thread(_read, path, offset, READ_CHUNK):
                        offset += len(data)
                        yield data
                    return
                await live.wait(seen)
                continue
            build = await self.get(app, build_id)
            if build.status in ("complete", "failed"):
                while data := await asyncio.to_thread(_read, path, offset, READ_CHUNK):
                    offset += len(data)
                    yield data
                return
            await asyncio.sleep(POLL_INTERVAL)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def expire(self) -> None:
        """The owner's loop (:meth:`LocalProvider.workers`): :meth:`expire_once` every :data:`EXPIRE_INTERVAL`."""
        while True:
            await self.expire_once()
            await asyncio.sleep(EXPIRE_INTERVAL)

    async def expire_once(self) -> int:
        """Mark failed every unfinished build (``created``, ``running``, or complete but cut off before its
        release was made) whose runner no live process holds, a row from before runners (none) included: its
        error goes into its log as a failure there would, and its work directory goes. Returns how many."""
        rows = await self.state.fetch_all(f"SELECT id, app, runner FROM builds WHERE {UNFINISHED}")
        gone = await dead(self.runner.root, {row["runner"] for row in rows})
        count = 0
        for row in rows:
            if row["runner"] not in gone:
                continue
            # the line first: a follower elsewhere reads the log once more when it sees the build ended
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_append, self.log_path(row["id"]), f"\nBuild failed: {RESTARTED}\n")
            changed = await self.state.execute(
                f"UPDATE builds SET status = 'failed', error = ?, release = '', ended = ?"
                f" WHERE id = ? AND runner = ? AND ({UNFINISHED})",
                (RESTARTED, _now(), row["id"], row["runner"]),
            )
            if not changed:  # nothing else changes a row whose runner is dead: only another owner did it first
                continue
            count += 1
            await asyncio.to_thread(shutil.rmtree, self.work_dir(row["id"]), True)
            log.log("build.expire", app=row["app"], build=row["id"], state="failed", error=RESTARTED)
        return count

    async def forget_app(self, app: str) -> None:
        """A deleted app's builds leave nothing behind: their images and their logs go (the records go with
        the app's)."""
        rows = await self.state.fetch_all("SELECT id, manifest FROM builds WHERE app = ?", (app,))
        images = logs = 0
        for row in rows:
            try:  # one build that cannot be cleaned up must not keep the app from going
                manifest = Manifest.model_validate_json(row["manifest"]) if row["manifest"] else Manifest()
                for name, service in manifest.services.items():
                    if service.build is not None:
                        images += await self.docker.remove_image(image_name(self.rack, app, name, row["id"]))
            except (ValidationError, RackError) as exc:
                message = exc.message if isinstance(exc, RackError) else "its manifest is unreadable"
                log.error("build.forget", app=app, build=row["id"], message=message)
            logs += await asyncio.to_thread(_forget, self.log_path(row["id"]), self.work_dir(row["id"]))
        log.log("build.forget", app=app, builds=len(rows), images=images, logs=logs)

    async def close(self) -> None:
        """Stop the builds running here (each is marked failed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
