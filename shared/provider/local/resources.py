"""Backing services on the local provider: postgres, mysql, mariadb, redis and memcached servers in containers.

A service named NAME is one container on the rack's network (``convox-<rack>``, the network apps run on)
where it answers at the host name NAME, a network alias (apps' process types resolve as ``TYPE.APP``, so a
bare name never collides with them), on its type's standard port. Its data lives in the named volume
``<rack>-resource-<NAME>``; the container ``<rack>-resource-<NAME>`` is restarted by Docker
(``unless-stopped``) and brought back by the owner of the background work when it is gone (see below), so
data survives a restart of the container, of the rack and of the engine. Container and volume carry the labels
``convox.rack`` and ``convox.resource``.

Credentials are generated (192 random bits, hex so that they need no escaping in URLs or command lines) and
kept with the record in the rack's state. The image of each type is a rack parameter (``<type>_image``),
the official image by default; the container gets the official images' environment contract
(POSTGRES_USER/PASSWORD/DB, MYSQL_ROOT_PASSWORD/DATABASE/USER/PASSWORD for mysql and mariadb alike,
``redis-server --requirepass``; memcached has no credentials), which the offline images of ``make images``
honour too. An image that cannot be pulled is an error naming the parameter and the ``make images`` target.
A service is ``creating`` (made in the background: ``create`` returns at once) until its server answers its
protocol's greeting over TCP (checked from the rack against the container's address), then ``running``; one
that cannot be made is ``failed`` with its reason, holding no container and no volume, until it is deleted
or created again. Nothing here logs a password or a URL that carries one.

**Who does the work.** A create or a delete runs in the process that was asked (the provisioner, or the
builds service for a manifest's resources), which records its runner token
(:mod:`shared.provider.local.runners`) in the record's ``runner`` column. The owner of the background work
(:meth:`LocalResources.loops`, run by :meth:`shared.provider.local.LocalProvider.workers`) looks every
:data:`RECONCILE_SECONDS`: a creation or a deletion whose runner is dead (its process was killed, or it
handed the work over after a failure) is claimed by one conditional write (so two owners never both take it,
and work whose runner lives is never touched) and finished or undone: a creation whose server runs is waited
on until it answers, one whose server does not is failed (nothing of it left); a deletion is done again. A
running service whose container is gone gets it again (its volume keeps the data); at the owner's start, a
server stopped by hand is started too. A pass costs one container listing and one read of the records.
Dumps (export and import) are made by the service's own tools in its container:
:mod:`shared.provider.local.dumps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from shared.errors import Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.models import Resource, ResourceType
from shared.names import check_service_name, manifest_service
from shared.provider.local import dumps
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import LABEL_RACK, ContainerInfo, ContainerSummary, Docker
from shared.provider.local.params import LocalParams
from shared.provider.local.resource_kinds import PROBE_TIMEOUT, Record, kind_of
from shared.provider.local.runners import Runner, dead
from shared.provider.local.state import State
from shared.provider.workers import Loop

log = Logger("resources")
LABEL_RESOURCE = "convox.resource"
LABEL_RESOURCE_TYPE = "convox.resource.type"
READY_TIMEOUT = 180.0
"""How long a new server may take to accept connections (mysql's first start is the slowest)."""
RECONCILE_SECONDS = 3.0
"""Between two passes of the owner over the backing services (work whose process died, servers gone)."""
RESTORE_BACKOFF_SECONDS = 30.0
"""Before a server that could not be brought back is tried again."""


class LocalResources:
    def __init__(
        self,
        state: State,
        docker: Docker,
        apps: LocalApps,
        params: LocalParams,
        rack: str,
        network: str,
        runner: Runner,
    ) -> None:
        self.state = state
        self.docker = docker
        self.apps = apps
        self.params = params
        self.rack = rack
        self.network = network
        self.runner = runner
        """This process's liveness, recorded with the creations and deletions it runs."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.importing: set[str] = set()
        self.owned: set[str] = set()
        """Services the owner's work of this process is on (taken over, being brought back): skipped by a pass."""
        self.retry_at: dict[str, float] = {}
        """When a server that could not be brought back is tried again (the loop's clock)."""

    # ---- names and records -----------------------------------------------------------------------

    def container_name(self, name: str) -> str:
        return f"{self.rack}-resource-{name}"

    def volume_name(self, name: str) -> str:
        return f"{self.rack}-resource-{name}"

    def labels(self, record: Record) -> dict[str, str]:
        return {LABEL_RACK: self.rack, LABEL_RESOURCE: record.name, LABEL_RESOURCE_TYPE: record.kind.name}

    async def _record(self, name: str) -> Record:
        check_service_name(name)
        row = await self.state.fetch_one("SELECT * FROM resources WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no such service: {name}")
        return Record.from_row(row)

    async def _links(self) -> dict[str, list[str]]:
        rows = await self.state.fetch_all("SELECT resource, app FROM links ORDER BY resource, app")
        links: dict[str, list[str]] = {}
        for row in rows:
            links.setdefault(row["resource"], []).append(row["app"])
        return links

    async def _containers(self) -> dict[str, ContainerSummary]:
        """The rack's service containers by service name."""
        found = await self.docker.containers({LABEL_RACK: self.rack}, all=True)
        return {c["Labels"][LABEL_RESOURCE]: c for c in found if LABEL_RESOURCE in (c.get("Labels") or {})}

    async def _running(self, name: str) -> tuple[Record, str]:
        """The service's record and the id of its running container (NotFound, Conflict)."""
        record = await self._record(name)
        container = (await self._containers()).get(name)
        if record.status != "running" or container is None or container.get("State") != "running":
            raise Conflict(f"service {name} is not running")
        return record, str(container["Id"])

    def _resource(self, record: Record, apps: list[str], container: ContainerSummary | None, reveal: bool) -> Resource:
        status = record.status
        if status == "running":  # what the server is doing now, when it is not running
            state = (container.get("State") if container else None) or "missing"
            status = {"running": "running", "restarting": "restarting"}.get(state, "stopped")
        return Resource(
            name=record.name,
            type=cast(ResourceType, record.kind.name),
            status=status,
            url=record.kind.url(record.name, record.creds, reveal),
            apps=apps,
            message=record.message,
        )

    # ---- the contract ----------------------------------------------------------------------------

    async def get(self, name: str, reveal: bool = False) -> Resource:
        record = await self._record(name)
        links = await self._links()
        containers = await self._containers()
        return self._resource(record, links.get(name, []), containers.get(name), reveal)

    async def address(self, name: str) -> tuple[str, int]:
        record, container_id = await self._running(name)
        networks = ((await self.docker.inspect(container_id)).get("NetworkSettings") or {}).get("Networks") or {}
        ip = str((networks.get(self.network) or {}).get("IPAddress") or "")
        if not ip:
            raise Conflict(f"service {name} has no address on the rack's network")
        return ip, record.kind.port

    async def export(self, name: str) -> AsyncGenerator[bytes]:
        dumps.dumpable((await self._record(name)).kind.name)
        record, container_id = await self._running(name)
        kind = record.kind
        return dumps.export(self.docker, container_id, kind.name, record.creds, kind.port, record.scrub)

    async def import_(self, name: str, dump: AsyncIterable[bytes]) -> None:
        dumps.dumpable((await self._record(name)).kind.name)
        record, container_id = await self._running(name)
        if name in self.importing:
            raise Conflict(f"an import into {name} is under way: wait for it to end")
        self.importing.add(name)
        kind = record.kind
        start = time.perf_counter()
        state, message = "error", "cancelled"
        try:
            await dumps.load(self.docker, container_id, kind.name, record.creds, kind.port, record.scrub, dump)
            state, message = "success", ""
        except dumps.ToolFailed as exc:
            message = exc.brief  # never what the tool quoted of the data
            raise
        except Exception as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            raise
        finally:
            self.importing.discard(name)
            elapsed = (time.perf_counter() - start) * 1000
            said = {"message": message} if state == "error" else {}
            log.log("resource.import", resource=name, type=kind.name, state=state, **said, elapsed=elapsed)

    async def list(self, reveal: bool = False) -> list[Resource]:
        rows = await self.state.fetch_all("SELECT * FROM resources ORDER BY name")
        links = await self._links()
        containers = await self._containers()
        return [
            self._resource(record, links.get(record.name, []), containers.get(record.name), reveal)
            for record in map(Record.from_row, rows)
        ]

    async def create(self, kind: str, name: str) -> Resource:
        spec = kind_of(kind)
        check_service_name(name)
        image = (await self.params.get())[f"{spec.name}_image"]
        record = Record(name, spec, "creating", image, spec.credentials())
        inserted = await self.state.execute(  # over a failed one of the name (it holds nothing): tried again
            "INSERT INTO resources (name, type, status, image, username, password, database, root_password, "
            "created, runner) VALUES (?, ?, 'creating', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "type = excluded.type, status = 'creating', image = excluded.image, username = excluded.username, "
            "password = excluded.password, database = excluded.database, root_password = excluded.root_password, "
            "created = excluded.created, message = '', runner = excluded.runner WHERE resources.status = 'failed'",
            (
                name,
                spec.name,
                image,
                record.creds.username,
                record.creds.password,
                record.creds.database,
                record.creds.root_password,
                datetime.now(UTC).isoformat(),
                self.runner.hold(),
            ),
        )
        if not inserted:
            raise Conflict(f"service already exists: {name}")
        # In the background: the service is `creating` until it answers, then `running`; or `failed`, with
        # why, holding nothing (no container, no volume). `convox services create` waits for one or the other.
        self._spawn(self._provision(record))
        return await self.get(name)

    async def delete(self, name: str) -> None:
        record = await self._record(name)
        failed = "DELETE FROM resources WHERE name = ? AND status = 'failed'"  # only its record is left
        if record.status == "failed" and await self.state.execute(failed, (name,)):
            log.log("resource.delete", resource=name, type=record.kind.name, state="failed")
            return
        changed = await self.state.execute(
            "UPDATE resources SET status = 'deleting', runner = ? WHERE name = ? AND status = 'running' "
            "AND NOT EXISTS (SELECT 1 FROM links WHERE resource = ?)",
            (self.runner.hold(), name, name),
        )
        if not changed:
            apps = (await self._links()).get(name, [])
            if apps:
                raise Conflict(f"service {name} is linked to {', '.join(apps)}: unlink it first")
            raise Conflict(f"service {name} is {record.status}")
        try:
            with log.measure("resource.delete", resource=name, type=record.kind.name):
                await self._remove(record.name)
        except Exception:
            await self._hand_over(name)  # the owner finishes it
            raise

    async def link(self, name: str, app: str) -> Resource:
        record = await self._record(name)
        await self.apps.get(app)
        changed = await self.state.execute(
            "INSERT INTO links (resource, app, created) SELECT ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM resources WHERE name = ? AND status = 'running') "
            "ON CONFLICT (resource, app) DO NOTHING",
            (name, app, datetime.now(UTC).isoformat(), name),
        )
        if not changed:
            if app in (await self._links()).get(name, []):
                raise Conflict(f"service {name} is already linked to {app}")
            raise Conflict(f"service {name} is {record.status}")
        log.log("resource.link", resource=name, app=app)
        return await self.get(name)

    async def unlink(self, name: str, app: str) -> Resource:
        await self._record(name)
        if not await self.state.execute("DELETE FROM links WHERE resource = ? AND app = ?", (name, app)):
            raise NotFound(f"service {name} is not linked to {app}")
        log.log("resource.unlink", resource=name, app=app)
        return await self.get(name)

    async def forget_app(self, app: str) -> None:
        """The app is being deleted: its links go with it (its manifest's services and their data stay)."""
        async with self.state.transaction() as tx:
            await tx.execute("DELETE FROM links WHERE app = ?", (app,))
            await tx.execute("DELETE FROM manifest_resources WHERE app = ?", (app,))

    # ---- resources of an app's manifest ------------------------------------------------------------

    async def declared(self, app: str) -> dict[str, str]:
        rows = await self.state.fetch_all(
            "SELECT name, resource FROM manifest_resources WHERE app = ? ORDER BY name", (app,)
        )
        return {row["name"]: row["resource"] for row in rows}

    async def declare(self, app: str, name: str, kind: str) -> Resource:
        spec = kind_of(kind)
        service = manifest_service(app, name)
        await self.apps.get(app)
        row = await self.state.fetch_one("SELECT type FROM resources WHERE name = ?", (service,))
        if row is None:
            with contextlib.suppress(Conflict):  # made at the same moment by another deploy: waited on below
                await self.create(spec.name, service)
        elif row["type"] != spec.name:
            raise Conflict(
                f"resources.{name} is {spec.name} but the service {service} is {row['type']}: delete it with "
                f"`convox services delete {service}` (its data goes with it) or rename the resource"
            )
        try:
            await self._wait_running(service)
        except RackError:  # a deploy that cannot have its resource leaves nothing of it
            failed = await self.state.fetch_one("SELECT status FROM resources WHERE name = ?", (service,))
            if failed is not None and failed["status"] == "failed":
                with contextlib.suppress(NotFound, Conflict):
                    await self.delete(service)
            raise
        async with self.state.transaction() as tx:
            now = datetime.now(UTC).isoformat()
            await tx.execute(
                "INSERT INTO manifest_resources (app, name, resource, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (app, name, service, now),
            )
            await tx.execute(
                "INSERT INTO links (resource, app, created) VALUES (?, ?, ?) ON CONFLICT (resource, app) DO NOTHING",
                (service, app, now),
            )
        log.log("resource.declare", app=app, resource=name, service=service, type=spec.name)
        return await self.get(service, reveal=True)

    async def undeclare(self, app: str, name: str) -> None:
        service = (await self.declared(app)).get(name)
        if service is None:
            raise NotFound(f"app {app} has no resource {name}")
        async with self.state.transaction() as tx:
            await tx.execute("DELETE FROM manifest_resources WHERE app = ? AND name = ?", (app, name))
            await tx.execute("DELETE FROM links WHERE resource = ? AND app = ?", (service, app))
        log.log("resource.undeclare", app=app, resource=name, service=service)

    async def _wait_running(self, name: str) -> None:
        """Until the service is running (another caller may be creating it), for as long as a create takes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT + PROBE_TIMEOUT
        while True:
            record = await self._record(name)
            if record.status == "running":
                return
            if record.status == "failed":
                raise RackError(f"service {name} could not be made: {record.message}", status=502)
            if record.status != "creating" or loop.time() > deadline:
                raise Conflict(f"service {name} is {record.status}")
            await asyncio.sleep(0.5)

    # ---- the owner's work (see the module) -----------------------------------------------------------

    def loops(self) -> Sequence[Loop]:
        """The backing services' part of :meth:`shared.provider.local.LocalProvider.workers`."""
        return [Loop("resources.reconcile", self._reconcile_loop)]

    async def _reconcile_loop(self) -> None:
        await self.reconcile(start_stopped=True)  # the owner (re)starts: so do the servers stopped by hand
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            await self.reconcile()

    async def reconcile(self, start_stopped: bool = False) -> None:
        """One pass of the owner: take over the creations and deletions whose runner is dead, bring back the
        missing servers of running services (and, with ``start_stopped``, start those that are stopped)."""
        # the containers before the records: a service deleted meanwhile then reads deleting, never missing
        containers = await self._containers()
        rows = await self.state.fetch_all("SELECT * FROM resources ORDER BY name")
        working = {row["runner"] for row in rows if row["status"] in ("creating", "deleting")}
        gone = await dead(self.runner.root, working)
        now = asyncio.get_running_loop().time()
        for row in rows:
            record = Record.from_row(row)
            name, container = record.name, containers.get(record.name)
            if name in self.owned:
                continue
            if record.status in ("creating", "deleting"):
                if row["runner"] in gone and await self._claim(name, record.status, row["runner"]):
                    log.log("resource.takeover", resource=name, status=record.status, runner=row["runner"] or "none")
                    creating = record.status == "creating"
                    self._own(name, self._resume(record, container) if creating else self._finish_delete(record))
            elif record.status == "running":
                if container is None and self.retry_at.get(name, 0.0) <= now:
                    self._own(name, self._restore(record))
                elif container is not None and start_stopped and container.get("State") in ("exited", "created"):
                    self._own(name, self._start(record, container["Id"]))

    async def _claim(self, name: str, status: str, runner: str) -> bool:
        """Make the work this process's, if it is still the dead runner's (one owner of two wins)."""
        return bool(
            await self.state.execute(
                "UPDATE resources SET runner = ? WHERE name = ? AND status = ? AND runner = ?",
                (self.runner.hold(), name, status, runner),
            )
        )

    async def _hand_over(self, name: str) -> None:
        """This process could not end its work on the service: the owner's next pass takes it over."""
        with contextlib.suppress(Exception):
            await self.state.execute(
                "UPDATE resources SET runner = '' WHERE name = ? AND runner = ?", (name, self.runner.token)
            )

    def _own(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self.owned.add(name)
        self._spawn(coro).add_done_callback(lambda _: self.owned.discard(name))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # ---- provisioning ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background, kept until it ends (its failure is logged by its own measure)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a create's caller may be gone, and the owner's work has no caller

    async def _provision(self, record: Record) -> None:
        try:
            with log.measure("resource.create", resource=record.name, type=record.kind.name, image=record.image):
                await self._remove_artifacts(record.name)  # a crashed create's leftovers hold stale credentials
                await self.docker.ensure_network(self.network, {LABEL_RACK: self.rack})
                await self._ensure_image(record)
                await self.docker.volume_create(self.volume_name(record.name), self.labels(record))
                container = await self._run(record)
                await self._wait_ready(record, container["Id"])
                await self._ready(record.name)
        except Exception as exc:  # (this process dying meanwhile leaves it creating: the owner takes it over)
            await self._failed(record, exc)

    async def _ready(self, name: str) -> None:
        await self.state.execute(
            "UPDATE resources SET status = 'running' WHERE name = ? AND status = 'creating' AND runner = ?",
            (name, self.runner.token),
        )

    async def _failed(self, record: Record, exc: Exception) -> None:
        """The service could not be made: nothing of it stays (container, volume) but its record, ``failed``
        with why (its passwords scrubbed), until it is deleted or created again."""
        message = record.scrub(exc.message if isinstance(exc, RackError) else f"{type(exc).__name__}: {exc}")
        try:
            await self._remove_artifacts(record.name)
        except Exception:
            await self._hand_over(record.name)  # the owner undoes it
            raise
        await self.state.execute(
            "UPDATE resources SET status = 'failed', message = ? WHERE name = ? AND status = 'creating'",
            (message, record.name),
        )

    async def _ensure_image(self, record: Record) -> None:
        """The service's image on the engine (pulled when missing); one that cannot be had is an error that
        says how to pick another (the rack parameter) or build the offline one (`make images`)."""
        try:
            await self.docker.ensure_image(record.image)
        except RackError as exc:
            kind = record.kind
            offline = f"rack-local/{kind.image_target}:bookworm"
            raise RackError(
                f"{exc.message}; pick another image with `convox rack params set {kind.name}_image=IMAGE`, or "
                f"build the offline one with `make images` (then {kind.name}_image={offline})",
                status=exc.status,
            ) from None

    async def _run(self, record: Record) -> ContainerInfo:
        kind = record.kind
        config: dict[str, Any] = {
            "Image": record.image,
            "Env": [f"{key}={value}" for key, value in sorted(kind.environment(record.creds).items())],
            "Labels": self.labels(record),
            "Hostname": record.name,
            "ExposedPorts": {f"{kind.port}/tcp": {}},
            "HostConfig": {
                "Mounts": [{"Type": "volume", "Source": self.volume_name(record.name), "Target": kind.data}]
                if kind.data
                else [],
                "RestartPolicy": {"Name": "unless-stopped"},
                "NetworkMode": self.network,
            },
            "NetworkingConfig": {"EndpointsConfig": {self.network: {"Aliases": [record.name]}}},
        }
        command = kind.command(record.creds)
        if command:
            config["Cmd"] = command
        container = await self.docker.run(config, name=self.container_name(record.name))
        log.log("resource.start", resource=record.name, id=container["Id"][:12])
        return container

    async def _wait_ready(self, record: Record, container_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            info = await self.docker.inspect(container_id)
            state = info.get("State") or {}
            if not state.get("Running") or state.get("Restarting") or info.get("RestartCount"):
                output = record.scrub(await self.docker.tail(container_id, 10)).strip()
                raise RackError(
                    f"{record.kind.name} {record.name} exited with code {state.get('ExitCode')} before it accepted "
                    f"connections" + (f": {output}" if output else ""),
                    status=502,
                )
            networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
            ip = str((networks.get(self.network) or {}).get("IPAddress") or "")
            if ip and await record.kind.ready(ip, record.creds):
                return
            if loop.time() > deadline:
                raise RackError(
                    f"{record.kind.name} {record.name} did not accept connections within {READY_TIMEOUT:.0f}s",
                    status=504,
                )
            await asyncio.sleep(0.5)

    async def _remove_artifacts(self, name: str) -> None:
        """Remove the service's container and volume (what exists of them)."""
        for container in await self.docker.containers({LABEL_RACK: self.rack, LABEL_RESOURCE: name}, all=True):
            with contextlib.suppress(NotFound):
                await self.docker.remove(container["Id"])
        with contextlib.suppress(NotFound):
            await self.docker.remove(self.container_name(name))
        await self.docker.volume_remove(self.volume_name(name))

    async def _remove(self, name: str) -> None:
        """Remove everything of the service: container, volume, links, record."""
        await self._remove_artifacts(name)
        async with self.state.transaction() as tx:
            await tx.execute("DELETE FROM links WHERE resource = ?", (name,))
            await tx.execute("DELETE FROM manifest_resources WHERE resource = ?", (name,))
            await tx.execute("DELETE FROM resources WHERE name = ?", (name,))

    # ---- the owner's work on one service ------------------------------------------------------------

    async def _resume(self, record: Record, container: ContainerSummary | None) -> None:
        """A creation whose process died: its server, when running, is waited on; else it is undone."""
        try:
            with log.measure("resource.resume", resource=record.name):
                if container is None or container.get("State") != "running":
                    raise RackError(f"{record.kind.name} {record.name} was being created when its process stopped")
                await self._wait_ready(record, container["Id"])
                await self._ready(record.name)
        except Exception as exc:
            await self._failed(record, exc)

    async def _finish_delete(self, record: Record) -> None:
        try:
            with log.measure("resource.delete", resource=record.name, type=record.kind.name):
                await self._remove(record.name)
        except Exception:
            await self._hand_over(record.name)  # the next pass tries again
            raise

    async def _restore(self, record: Record) -> None:
        """The container is gone (the volume keeps the data): make it again, unless the service changed
        meanwhile (its server came up as the pass read, or it is being deleted)."""
        name = record.name
        try:
            with log.measure("resource.restore", resource=name, type=record.kind.name):
                if not await self._still_missing(name):
                    return
                await self.docker.ensure_network(self.network, {LABEL_RACK: self.rack})
                await self._ensure_image(record)
                await self.docker.volume_create(self.volume_name(name), self.labels(record))
                await self._run(record)
                if not await self._is_running(name):  # deleted while this made it: what this made goes too
                    await self._remove_artifacts(name)
            self.retry_at.pop(name, None)
        except Exception:
            self.retry_at[name] = asyncio.get_running_loop().time() + RESTORE_BACKOFF_SECONDS
            raise

    async def _is_running(self, name: str) -> bool:
        row = await self.state.fetch_one("SELECT status FROM resources WHERE name = ?", (name,))
        return row is not None and row["status"] == "running"

    async def _still_missing(self, name: str) -> bool:
        found = await self.docker.containers({LABEL_RACK: self.rack, LABEL_RESOURCE: name}, all=True)
        return not found and await self._is_running(name)

    async def _start(self, record: Record, container_id: str) -> None:
        with log.measure("resource.restart", resource=record.name):
            await self.docker.start(container_id)
