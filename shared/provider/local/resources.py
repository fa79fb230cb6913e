"""Backing services on the local provider: postgres, mysql, mariadb, redis and memcached servers in containers.

A service named NAME is one container on the rack's network (``convox-<rack>``, the network apps run on)
where it answers at the host name NAME, a network alias (apps' process types resolve as ``TYPE.APP``, so a
bare name never collides with them), on its type's standard port. Its data lives in the named volume
``<rack>-resource-<NAME>``; the container ``<rack>-resource-<NAME>`` is restarted by Docker
(``unless-stopped``) and brought back by :meth:`LocalResources.adopt` when it is gone, so data survives a
restart of the container, of the rack and of the engine. Container and volume carry the labels
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
Dumps (export and import) are made by the service's own tools in its container:
:mod:`shared.provider.local.dumps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import aiosqlite

from shared.errors import BadRequest, Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.models import Resource, ResourceType
from shared.names import check_service_name, manifest_service
from shared.provider.local import dumps
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import LABEL_RACK, Docker
from shared.provider.local.state import State

log = Logger("resources")
LABEL_RESOURCE = "convox.resource"
LABEL_RESOURCE_TYPE = "convox.resource.type"
READY_TIMEOUT = 180.0
"""How long a new server may take to accept connections (mysql's first start is the slowest)."""
PROBE_TIMEOUT = 3.0
HIDDEN = "***"
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")

Talk = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    database: str
    root_password: str = ""


def _secret() -> str:
    return secrets.token_hex(24)


class Kind:
    """One type of backing service: its port, data directory, default image, URL and readiness check."""

    name: ClassVar[str]
    scheme: ClassVar[str]
    port: ClassVar[int]
    data: ClassVar[str]
    default_image: ClassVar[str]

    def credentials(self) -> Credentials:
        return Credentials(username="app", password=_secret(), database="app")

    image_target: ClassVar[str] = ""
    """The ``make images`` image that serves this type offline (``bash images/build.sh NAME``)."""

    def url(self, host: str, creds: Credentials, reveal: bool = False) -> str:
        password = creds.password if reveal else HIDDEN
        return f"{self.scheme}://{creds.username}:{password}@{host}:{self.port}/{creds.database}"

    def environment(self, creds: Credentials) -> dict[str, str]:
        return {}

    def command(self, creds: Credentials) -> list[str] | None:
        return None

    def talk(self, creds: Credentials) -> Talk:
        raise NotImplementedError

    async def ready(self, ip: str, creds: Credentials) -> bool:
        """Whether the server at ``ip`` accepts connections: a TCP connect and its protocol's greeting."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, self.port), PROBE_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        try:
            return await asyncio.wait_for(self.talk(creds)(reader, writer), PROBE_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class Postgres(Kind):
    name = "postgres"
    scheme = "postgres"
    port = 5432
    data = "/var/lib/postgresql/data"
    default_image = "postgres:16"
    image_target = "postgres"

    def environment(self, creds: Credentials) -> dict[str, str]:
        return {"POSTGRES_USER": creds.username, "POSTGRES_PASSWORD": creds.password, "POSTGRES_DB": creds.database}

    def talk(self, creds: Credentials) -> Talk:
        async def startup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            # A protocol 3.0 startup message: the server answers with an authentication request ('R') once it
            # takes connections for this user and database, with an error ('E') while it is starting up.
            pairs = (("user", creds.username), ("database", creds.database))
            body = struct.pack("!I", 196608) + b"".join(f"{k}\0{v}\0".encode() for k, v in pairs) + b"\0"
            writer.write(struct.pack("!I", len(body) + 4) + body)
            await writer.drain()
            return await reader.readexactly(1) == b"R"

        return startup


class MySQL(Kind):
    name = "mysql"
    scheme = "mysql"
    port = 3306
    data = "/var/lib/mysql"
    default_image = "mysql:8"
    image_target = "mysql"

    def credentials(self) -> Credentials:
        return Credentials(username="app", password=_secret(), database="app", root_password=_secret())

    def environment(self, creds: Credentials) -> dict[str, str]:
        return {
            "MYSQL_ROOT_PASSWORD": creds.root_password,
            "MYSQL_DATABASE": creds.database,
            "MYSQL_USER": creds.username,
            "MYSQL_PASSWORD": creds.password,
        }

    def talk(self, creds: Credentials) -> Talk:
        async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            # The server speaks first: a handshake packet (protocol version 10), or an error packet (0xff).
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
            return payload[:1] == b"\x0a"

        return handshake


class Redis(Kind):
    name = "redis"
    scheme = "redis"
    port = 6379
    data = "/data"
    default_image = "redis:7"
    image_target = "redis"

    def credentials(self) -> Credentials:
        return Credentials(username="", password=_secret(), database="0")

    def command(self, creds: Credentials) -> list[str] | None:
        # no wait for more replicas before a snapshot is sent: an export (`redis-cli --rdb`) is the only one
        flags = ["--appendonly", "yes", "--repl-diskless-sync-delay", "0"]
        return ["redis-server", "--requirepass", creds.password, *flags]

    def talk(self, creds: Credentials) -> Talk:
        def command(*args: str) -> bytes:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            return b"".join(parts)

        async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(command("AUTH", creds.password) + command("PING"))
            await writer.drain()
            return (await reader.readline()).startswith(b"+OK") and (await reader.readline()).startswith(b"+PONG")

        return ping


class MariaDB(MySQL):
    """The official mariadb image takes the mysql image's MYSQL_* variables too; offline, the mysql image of
    ``make images`` is MariaDB already."""

    name = "mariadb"
    default_image = "mariadb:11"
    image_target = "mysql"


class Memcached(Kind):
    """No credentials and no data on disk (memcached keeps everything in memory): the URL is
    ``memcached://NAME:11211``."""

    name = "memcached"
    scheme = "memcached"
    port = 11211
    data = ""
    default_image = "memcached:1.6"
    image_target = "memcached"

    def credentials(self) -> Credentials:
        return Credentials(username="", password="", database="")

    def url(self, host: str, creds: Credentials, reveal: bool = False) -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def talk(self, creds: Credentials) -> Talk:
        async def version(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"version\r\n")  # the text protocol
            await writer.drain()
            return (await reader.readline()).startswith(b"VERSION ")

        return version


KINDS: dict[str, Kind] = {kind.name: kind for kind in (Postgres(), MySQL(), MariaDB(), Redis(), Memcached())}
PARAM_DEFAULTS: dict[str, str] = {f"{name}_image": kind.default_image for name, kind in KINDS.items()}


def kind_of(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise BadRequest(f"unknown service type: {kind!r} (known: {known})") from None


@dataclass(frozen=True)
class Record:
    name: str
    kind: Kind
    status: str
    image: str
    creds: Credentials
    message: str = ""

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Record:
        creds = Credentials(row["username"], row["password"], row["database"], row["root_password"])
        return cls(row["name"], KINDS[row["type"]], row["status"], row["image"], creds, row["message"])

    def scrub(self, text: str) -> str:
        """``text`` without this service's passwords (docker's output can echo its environment)."""
        for secret in (self.creds.password, self.creds.root_password):
            if secret:
                text = text.replace(secret, HIDDEN)
        return text


class LocalParams:
    """Rack parameters in SQLite: the image of each backing-service type (``postgres_image``, ...)."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def get(self) -> dict[str, str]:
        rows = await self.state.fetch_all("SELECT key, value FROM params")
        stored = {row["key"]: row["value"] for row in rows}
        return {key: stored.get(key, default) for key, default in sorted(PARAM_DEFAULTS.items())}

    async def set(self, values: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(values) - set(PARAM_DEFAULTS))
        if unknown:
            raise BadRequest(f"unknown rack parameter: {unknown[0]} (known: {', '.join(sorted(PARAM_DEFAULTS))})")
        for key, value in values.items():
            if value and not IMAGE_RE.fullmatch(value):
                raise BadRequest(f"invalid image for {key}: {value!r}")
        async with self.state.transaction() as tx:  # all of them or none
            for key, value in sorted(values.items()):
                if value:
                    await tx.execute(
                        "INSERT INTO params (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
                else:
                    await tx.execute("DELETE FROM params WHERE key = ?", (key,))
        log.log("params.set", keys=",".join(sorted(values)))
        return await self.get()


class LocalResources:
    def __init__(
        self, state: State, docker: Docker, apps: LocalApps, params: LocalParams, rack: str, network: str
    ) -> None:
        self.state = state
        self.docker = docker
        self.apps = apps
        self.params = params
        self.rack = rack
        self.network = network
        self.tasks: set[asyncio.Task[None]] = set()
        self.importing: set[str] = set()

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

    async def _containers(self) -> dict[str, dict[str, Any]]:
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

    def _resource(self, record: Record, apps: list[str], container: dict[str, Any] | None, reveal: bool) -> Resource:
        status = record.status
        if status == "running":  # what the server is doing now, when it is not running
            state = str((container or {}).get("State") or "missing")
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
            "created) VALUES (?, ?, 'creating', ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "type = excluded.type, status = 'creating', image = excluded.image, username = excluded.username, "
            "password = excluded.password, database = excluded.database, root_password = excluded.root_password, "
            "created = excluded.created, message = '' WHERE resources.status = 'failed'",
            (
                name,
                spec.name,
                image,
                record.creds.username,
                record.creds.password,
                record.creds.database,
                record.creds.root_password,
                datetime.now(UTC).isoformat(),
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
            "UPDATE resources SET status = 'deleting' WHERE name = ? AND status = 'running' "
            "AND NOT EXISTS (SELECT 1 FROM links WHERE resource = ?)",
            (name, name),
        )
        if not changed:
            apps = (await self._links()).get(name, [])
            if apps:
                raise Conflict(f"service {name} is linked to {', '.join(apps)}: unlink it first")
            raise Conflict(f"service {name} is {record.status}")
        with log.measure("resource.delete", resource=name, type=record.kind.name):
            await self._remove(record.name)

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

    async def adopt(self) -> None:
        rows = await self.state.fetch_all("SELECT * FROM resources ORDER BY name")
        containers = await self._containers()
        for record in map(Record.from_row, rows):
            container = containers.get(record.name)
            if record.status == "creating":  # its provisioner died: start over or give up, never half-made
                self._spawn(self._resume(record, container))
            elif record.status == "deleting":
                self._spawn(self._finish_delete(record))
            elif container is None:
                self._spawn(self._restore(record))
            elif container.get("State") in ("exited", "created"):
                self._spawn(self._start(record, container["Id"]))

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
            task.exception()  # retrieved: a create's caller may be gone, and adoption has no caller

    async def _provision(self, record: Record) -> None:
        try:
            with log.measure("resource.create", resource=record.name, type=record.kind.name, image=record.image):
                await self._remove_artifacts(record.name)  # a crashed create's leftovers hold stale credentials
                await self.docker.ensure_network(self.network, {LABEL_RACK: self.rack})
                await self._ensure_image(record)
                await self.docker.volume_create(self.volume_name(record.name), self.labels(record))
                container = await self._run(record)
                await self._wait_ready(record, container["Id"])
                await self.state.execute("UPDATE resources SET status = 'running' WHERE name = ?", (record.name,))
        except Exception as exc:  # (a provisioner that stops meanwhile leaves it creating: adoption resumes it)
            await self._failed(record, exc)

    async def _failed(self, record: Record, exc: Exception) -> None:
        """The service could not be made: nothing of it stays (container, volume) but its record, ``failed``
        with why (its passwords scrubbed), until it is deleted or created again."""
        message = record.scrub(exc.message if isinstance(exc, RackError) else f"{type(exc).__name__}: {exc}")
        await self._remove_artifacts(record.name)
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

    async def _run(self, record: Record) -> dict[str, Any]:
        kind = record.kind
        config: dict[str, Any] = {
            "Image": record.image,
            "Env": [f"{key}={value}" for key, value in sorted(kind.environment(record.creds).items())],
            "Labels": self.labels(record),
            "Hostname": record.name,
            "ExposedPorts": {f"{kind.port}/tcp": {}},
            "HostConfig": {
                "Mounts": [
                    {"Type": "volume", "Source": self.volume_name(record.name), "Target": kind.data}
                ]
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

    # ---- after a restart -------------------------------------------------------------------------

    async def _resume(self, record: Record, container: dict[str, Any] | None) -> None:
        try:
            with log.measure("resource.resume", resource=record.name):
                if container is None or container.get("State") != "running":
                    raise RackError(f"{record.kind.name} {record.name} was being created when the rack stopped")
                await self._wait_ready(record, container["Id"])
                await self.state.execute("UPDATE resources SET status = 'running' WHERE name = ?", (record.name,))
        except Exception as exc:
            await self._failed(record, exc)

    async def _finish_delete(self, record: Record) -> None:
        with log.measure("resource.delete", resource=record.name, type=record.kind.name):
            await self._remove(record.name)

    async def _restore(self, record: Record) -> None:
        """The container is gone (the volume keeps the data): make it again."""
        with log.measure("resource.restore", resource=record.name, type=record.kind.name):
            await self.docker.ensure_network(self.network, {LABEL_RACK: self.rack})
            await self._ensure_image(record)
            await self.docker.volume_create(self.volume_name(record.name), self.labels(record))
            await self._run(record)

    async def _start(self, record: Record, container_id: str) -> None:
        with log.measure("resource.restart", resource=record.name):
            await self.docker.start(container_id)
