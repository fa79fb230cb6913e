"""Backing services on AWS: postgres, mysql and mariadb on RDS, redis and memcached on ElastiCache.

Each service NAME lives in the rack's VPC: its subnets and, as the only sources allowed to connect, the
security groups of the rack's instances and tasks (``RACK_AWS_SUBNETS`` / ``RACK_AWS_SECURITY_GROUPS``, else
the rack stack's ``Subnets`` and ``InstancesSecurity`` outputs, as Convox placed its services).

- **RDS** (postgres, mysql, mariadb) through CloudFormation (:mod:`shared.provider.aws.databases`): one
  stack ``<rack>-resource-<NAME>``, tagged ``System=convox Type=resource Rack Resource``.
- **ElastiCache** through its API (:mod:`shared.provider.aws.caches`), because moto's CloudFormation has no
  ElastiCache types: a security group of the service's own in the rack's cache subnet group, then a
  replication group for redis (an auth token, transit and at-rest encryption, so its URL is ``rediss://``)
  or a cache cluster for memcached (no credentials, as locally). Their id is ``<rack>-<NAME>`` when that is
  a valid ElastiCache id, else a digest of both (ids are at most 40 characters, with no ``--``).

The record of a service is an item of ``<prefix>-resources`` (key ``name``) holding its type, status,
endpoint, what was made, and the apps linked to it (``links``) and those whose manifest declares it
(``declared``), each changed by one conditional update, so two callers never lose a link and a delete
never races a link. The generated password (192 random bits in hex) is kept as the apps' environments are:
an SSE-KMS object of the settings bucket (``resources/<NAME>/credentials.json``); the stack gets it as a
``NoEcho`` parameter. Nothing here logs a password or a URL carrying one.

Status: ``creating`` until the stack completes or the cache reports ``available`` with an endpoint, then
``running``; afterwards ``get`` and ``list`` read the live state from the RDS and ElastiCache APIs (one paged
call per API for a whole listing). On AWS one would also probe the endpoint over TCP before ``running``, as
the local provider does; moto's endpoints do not listen (their names do not even resolve), so the status
here comes from the APIs only (and a status reads ``missing`` when AWS no longer has the instance or cache).

A create returns at once, ``creating``; the process asked goes on in the background (minutes on AWS). A
create that fails removes what it made. **Who does the work**: the record names the process doing a create
or a delete (``runner``, a token of its :class:`AwsResources`) and a ``lease`` (epoch seconds) that the
process renews every third of ``RACK_AWS_RESOURCE_LEASE`` while it works. The owner of the background work
(:meth:`AwsResources.loops`, run by :meth:`shared.provider.aws.provider.AwsProvider.workers`) scans the
records every ``RACK_AWS_RESOURCE_POLL`` seconds: a creation or deletion whose lease lapsed (its process
died, or handed the work over after a failure) is claimed by one conditional write (of two owners one wins;
work whose lease is renewed is never touched) and finished from what AWS says: a creation waits for the
stack or the cache AWS goes on making, and is undone when AWS has none or it failed; a deletion is done
again. AWS keeps the servers themselves running: there is nothing to bring back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Coroutine, Sequence
from typing import Any, cast

from shared.errors import BadRequest, Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.models import Resource, ResourceType
from shared.names import check_service_name, manifest_service
from shared.provider.aws import stacks
from shared.provider.aws.apps import AwsApps
from shared.provider.aws.caches import Caches, Network
from shared.provider.aws.clients import Clients, translated
from shared.provider.aws.databases import Databases
from shared.provider.aws.resource_kinds import KINDS, Kind, cache_id, kind_of, live_status
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.aws.state import Item, State, from_item, now_iso, to_item
from shared.provider.workers import Loop

log = Logger("resources")
HIDDEN = "***"
NO_DUMPS = (
    "export and import are not made by the rack on aws yet (they need a task in the rack's network running the "
    "service's dump tools); use pg_dump, mysqldump or redis-cli against the service's URL from such a task"
)
NAMES = {"#n": "name", "#s": "status", "#l": "links", "#d": "declared", "#g": "security", "#r": "runner", "#e": "lease"}


class AwsResources:
    def __init__(self, state: State, clients: Clients, apps: AwsApps, rack: str, settings: AwsProviderSettings) -> None:
        self.state = state
        self.clients = clients
        self.apps = apps
        self.rack = rack
        self.settings = settings
        self.table = state.resources_table
        self.caches = Caches(clients, settings, rack)
        self.databases = Databases(clients, settings, rack)
        self.tasks: set[asyncio.Task[None]] = set()
        self.token = secrets.token_hex(8)
        """This process's name in the records of the creations and deletions it runs (``runner``)."""
        self.owned: set[str] = set()
        """Services whose work this process's owner took over and is on: skipped by a pass."""

    # ---- names and records -----------------------------------------------------------------------

    def stack_name(self, name: str) -> str:
        return f"{self.rack}-resource-{name}"

    def secret_key(self, name: str) -> str:
        return f"resources/{name}/credentials.json"

    def tags(self, record: Item) -> dict[str, str]:
        return {
            "System": "convox",
            "Type": "resource",
            "Rack": self.rack,
            "Resource": record["name"],
            "Service": record["type"],
        }

    async def _record(self, name: str) -> Item:
        check_service_name(name)
        return await self.state.get_item(self.table, {"name": name}, f"no such service: {name}")

    async def _records(self) -> list[Item]:
        return sorted([i async for i in self.state.scan(self.table)], key=lambda i: str(i["name"]))

    async def _password(self, record: Item) -> str:
        if not KINDS[record["type"]].secret:
            return ""
        return str((await self.state.get_json(self.secret_key(record["name"])))["password"])

    async def _update(
        self, name: str, expression: str, condition: str, values: dict[str, Any] | None = None, app: str = ""
    ) -> bool:
        """One conditional update of a record; False when the condition does not hold."""
        db = await self.state.dynamodb()
        names = {k: v for k, v in NAMES.items() if k in expression or k in condition}
        if app:
            names["#a"] = app
        try:
            with translated(f"cannot change service {name}"):
                await db.update_item(
                    TableName=self.table,
                    Key=to_item({"name": name}),
                    UpdateExpression=expression,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    **({"ExpressionAttributeValues": to_item(values)} if values else {}),
                )
        except Conflict:
            return False
        return True

    async def _running(self, name: str, made: Item) -> None:
        """The create is done: the service is running at its endpoint (with what was made)."""
        names = {f"#{k}": k for k in made}
        values = {":running": "running", ":creating": "creating", ":r": self.token, **{f":{k}": made[k] for k in made}}
        sets = ", ".join(f"#{k} = :{k}" for k in made)
        db = await self.state.dynamodb()
        with translated(f"service {name} was changed while it was being created"):
            await db.update_item(
                TableName=self.table,
                Key=to_item({"name": name}),
                UpdateExpression=f"SET #s = :running, {sets}",
                ConditionExpression="#s = :creating AND #r = :r",
                ExpressionAttributeNames={"#s": "status", "#r": "runner", **names},
                ExpressionAttributeValues=to_item(values),
            )

    async def _states(self, records: list[Item]) -> dict[str, str | None]:
        """The AWS status of each running service (its DB instance's or cache's; None when AWS has none), by
        name: one paged call per API whatever the number of services."""
        running = [r for r in records if r["status"] == "running"]
        found: dict[str, str | None] = {str(r["name"]): None for r in running}
        for service in sorted({KINDS[r["type"]].service for r in running}):
            statuses = await (self.databases.statuses() if service == "rds" else self.caches.statuses(service))
            for record in running:
                if KINDS[record["type"]].service == service:
                    found[str(record["name"])] = statuses.get(str(record.get("instance") or record.get("cache")))
        return found

    async def _resource(self, record: Item, state: str | None, reveal: bool) -> Resource:
        kind = KINDS[record["type"]]
        status = str(record["status"])
        if status == "running":
            status = live_status(kind, state)
        url = ""
        if record.get("host"):
            password = (await self._password(record)) if reveal else HIDDEN
            url = kind.url(str(record["host"]), int(record["port"]), password)
        apps = sorted(dict(record.get("links") or {}))
        message = str(record.get("message") or "")
        return Resource(
            name=record["name"], type=cast(ResourceType, kind.name), status=status, url=url, apps=apps, message=message
        )

    # ---- the contract ----------------------------------------------------------------------------

    async def get(self, name: str, reveal: bool = False) -> Resource:
        record = await self._record(name)
        return await self._resource(record, (await self._states([record])).get(name), reveal)

    async def list(self, reveal: bool = False) -> list[Resource]:
        records = await self._records()
        states = await self._states(records)
        return [await self._resource(r, states.get(str(r["name"])), reveal) for r in records]

    async def address(self, name: str) -> tuple[str, int]:
        record = await self._record(name)
        resource = await self._resource(record, (await self._states([record])).get(name), False)
        if resource.status != "running" or not record.get("host"):
            raise Conflict(f"service {name} is not running")
        return str(record["host"]), int(record["port"])

    async def create(self, kind: str, name: str) -> Resource:
        spec = kind_of(kind)
        check_service_name(name)
        network = await self._network()
        record: Item = {
            "name": name,
            "type": spec.name,
            "status": "creating",
            "created": now_iso(),
            "links": {},
            "declared": {},
            "runner": self.token,
            "lease": self._lease_end(),
        }
        if spec.service == "rds":
            record["stack"] = self.stack_name(name)
        else:
            record["cache"] = cache_id(self.rack, name)
        db = await self.state.dynamodb()
        with translated(f"service already exists: {name}"):  # over a failed one of the name: tried again
            await db.put_item(
                TableName=self.table,
                Item=to_item(record),
                ConditionExpression="attribute_not_exists(#n) OR #s = :failed",
                ExpressionAttributeNames={"#n": "name", "#s": "status"},
                ExpressionAttributeValues=to_item({":failed": "failed"}),
            )
        # In the background (minutes on AWS): creating, then running, or failed with why, holding nothing.
        self._spawn(self._provision(record, network))
        return await self.get(name)

    async def delete(self, name: str) -> None:
        record = await self._record(name)
        if record["status"] == "failed" and await self._update(
            name, "SET #s = :deleting", "#s = :failed", {":deleting": "deleting", ":failed": "failed"}
        ):
            db = await self.state.dynamodb()  # nothing of it is left but its record
            with translated(f"cannot delete service {name}"):
                await db.delete_item(TableName=self.table, Key=to_item({"name": name}))
            return
        if not await self._update(
            name,
            "SET #s = :deleting, #r = :r, #e = :e",
            "#s = :running AND size(#l) = :zero",
            {":deleting": "deleting", ":running": "running", ":zero": 0, ":r": self.token, ":e": self._lease_end()},
        ):
            record = await self._record(name)
            apps = sorted(dict(record.get("links") or {}))
            if apps:
                raise Conflict(f"service {name} is linked to {', '.join(apps)}: unlink it first")
            raise Conflict(f"service {name} is {record['status']}")
        await self._finish_delete(record)

    async def link(self, name: str, app: str) -> Resource:
        record = await self._record(name)
        await self.apps.get(app)
        if not await self._update(
            name,
            "SET #l.#a = :now",
            "#s = :running AND attribute_not_exists(#l.#a)",
            {":now": now_iso(), ":running": "running"},
            app,
        ):
            record = await self._record(name)
            if app in (record.get("links") or {}):
                raise Conflict(f"service {name} is already linked to {app}")
            raise Conflict(f"service {name} is {record['status']}")
        log.log("resource.link", resource=name, app=app)
        return await self.get(name)

    async def unlink(self, name: str, app: str) -> Resource:
        await self._record(name)
        if not await self._update(name, "REMOVE #l.#a", "attribute_exists(#l.#a)", app=app):
            raise NotFound(f"service {name} is not linked to {app}")
        log.log("resource.unlink", resource=name, app=app)
        return await self.get(name)

    async def forget_app(self, app: str) -> None:
        """The app is being deleted: its links and declarations go with it (the services and data stay)."""
        for record in await self._records():
            if app in (record.get("links") or {}) or app in (record.get("declared") or {}):
                await self._update(record["name"], "REMOVE #l.#a, #d.#a", "attribute_exists(#n)", app=app)

    # ---- resources of an app's manifest ------------------------------------------------------------

    async def declared(self, app: str) -> dict[str, str]:
        found = {
            str(r["declared"][app]): str(r["name"]) for r in await self._records() if app in (r.get("declared") or {})
        }
        return dict(sorted(found.items()))

    async def declare(self, app: str, name: str, kind: str) -> Resource:
        spec = kind_of(kind)
        service = manifest_service(app, name)
        await self.apps.get(app)
        try:
            existing: Item | None = await self._record(service)
        except NotFound:
            existing = None
        if existing is None:
            with contextlib.suppress(Conflict):  # made at the same moment by another deploy: waited on below
                await self.create(spec.name, service)
        elif existing["type"] != spec.name:
            raise Conflict(
                f"resources.{name} is {spec.name} but the service {service} is {existing['type']}: delete it with "
                f"`convox services delete {service}` (its data goes with it) or rename the resource"
            )
        try:
            await self._wait_running(service)
        except RackError:  # a deploy that cannot have its resource leaves nothing of it
            with contextlib.suppress(NotFound, Conflict):
                if (await self._record(service))["status"] == "failed":
                    await self.delete(service)
            raise
        if not await self._update(
            service,
            "SET #l.#a = if_not_exists(#l.#a, :now), #d.#a = :name",
            "#s = :running",
            {":now": now_iso(), ":name": name, ":running": "running"},
            app,
        ):
            raise Conflict(f"service {service} is {(await self._record(service))['status']}")
        log.log("resource.declare", app=app, resource=name, service=service, type=spec.name)
        return await self.get(service, reveal=True)

    async def undeclare(self, app: str, name: str) -> None:
        service = (await self.declared(app)).get(name)
        if service is None:
            raise NotFound(f"app {app} has no resource {name}")
        await self._update(service, "REMOVE #d.#a, #l.#a", "attribute_exists(#n)", app=app)
        log.log("resource.undeclare", app=app, resource=name, service=service)

    async def _wait_running(self, name: str) -> None:
        """Until the service is running (another caller may be creating it), for as long as a create takes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.resource_timeout
        while True:
            record = await self._record(name)
            if record["status"] == "running":
                return
            if record["status"] == "failed":
                raise RackError(f"service {name} could not be made: {record.get('message', '')}", status=502)
            if record["status"] != "creating" or loop.time() > deadline:
                raise Conflict(f"service {name} is {record['status']}")
            await asyncio.sleep(min(self.settings.resource_poll, 1.0))

    async def export(self, name: str) -> AsyncGenerator[bytes]:
        await self._record(name)
        raise BadRequest(NO_DUMPS)

    async def import_(self, name: str, dump: AsyncIterable[bytes]) -> None:
        await self._record(name)
        raise BadRequest(NO_DUMPS)

    # ---- the owner's work (see the module) -----------------------------------------------------------

    def loops(self) -> Sequence[Loop]:
        """The backing services' part of :meth:`shared.provider.aws.provider.AwsProvider.workers`."""
        return [Loop("resources.reconcile", self._reconcile_loop)]

    async def _reconcile_loop(self) -> None:
        while True:
            await self.reconcile()
            await asyncio.sleep(self.settings.resource_poll)

    async def reconcile(self) -> None:
        """One pass of the owner: take over the creations and deletions whose lease lapsed (one Scan)."""
        for record in await self._records():
            name, status = str(record["name"]), str(record["status"])
            if status not in ("creating", "deleting") or name in self.owned or not await self._claim(record):
                continue
            log.log("resource.takeover", resource=name, status=status, runner=record.get("runner") or "none")
            self.owned.add(name)
            work = self._resume(record) if status == "creating" else self._finish_delete(record)
            self._spawn(work).add_done_callback(lambda _, name=name: self.owned.discard(name))  # type: ignore[misc]

    async def _claim(self, record: Item) -> bool:
        """Make the work this process's, if its lease lapsed (and no other owner claimed it first)."""
        now = time.time()
        if float(record.get("lease") or 0) > now:
            return False
        return await self._update(
            str(record["name"]),
            "SET #r = :r, #e = :e",
            "#s = :status AND (attribute_not_exists(#e) OR #e <= :now)",
            {":r": self.token, ":e": self._lease_end(), ":status": record["status"], ":now": now},
        )

    def _lease_end(self) -> float:
        return time.time() + self.settings.resource_lease

    @contextlib.asynccontextmanager
    async def _leased(self, name: str) -> AsyncIterator[None]:
        """This process's lease on the service's work, renewed while the block runs; handed over (lapsed at
        once) when the block fails (its cleanup included), for the owner to take the work over."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.resource_lease / 3)
                with contextlib.suppress(RackError):  # tried again; the work goes on meanwhile
                    await self._update(name, "SET #e = :e", "#r = :r", {":e": self._lease_end(), ":r": self.token})

        renewing = asyncio.create_task(renew())
        try:
            yield
        except Exception:
            with contextlib.suppress(RackError):
                await self._update(name, "SET #e = :e", "#r = :r", {":e": 0, ":r": self.token})
            raise
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # ---- provisioning ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a create's caller may be gone, and the owner's work has no caller

    async def _network(self) -> Network:
        """The rack's subnets and the security groups of its instances and tasks."""
        subnets, clients = list(self.settings.subnets), list(self.settings.security_groups)
        cfn = await self.clients.get("cloudformation")
        with translated(f"cannot read the rack stack {self.rack}"):
            rack = await stacks.describe(cfn, self.rack)
        out = stacks.outputs(rack) if rack else {}
        subnets = subnets or [s for s in out.get("Subnets", "").split(",") if s]
        clients += [out["InstancesSecurity"]] if out.get("InstancesSecurity") else []
        if not subnets or not clients:
            raise BadRequest(
                f"the rack's network is unknown: no rack stack {self.rack} with Subnets and InstancesSecurity "
                "outputs, and RACK_AWS_SUBNETS / RACK_AWS_SECURITY_GROUPS are not set"
            )
        ec2 = await self.clients.get("ec2")
        with translated("cannot read the rack's subnets"):
            found = (await ec2.describe_subnets(SubnetIds=subnets))["Subnets"]
        return Network(vpc=str(found[0]["VpcId"]), subnets=subnets, clients=sorted(set(clients)))

    async def _provision(self, record: Item, network: Network) -> None:
        name, kind = str(record["name"]), KINDS[record["type"]]
        async with self._leased(name):  # (this process dying meanwhile: its lease lapses, the owner takes over)
            try:
                await self._make(record, kind, network)
            except Exception as exc:
                await self._failed(record, exc)

    async def _make(self, record: Item, kind: Kind, network: Network) -> None:
        name = str(record["name"])
        with log.measure("resource.create", resource=name, type=kind.name) as fields:
            password = secrets.token_hex(24) if kind.secret else ""
            if kind.secret:
                await self.state.put_secret_json(self.secret_key(name), {"password": password})
            if kind.service == "rds":
                made = await self.databases.create(name, record["stack"], kind, network, password, self.tags(record))
            else:
                made = await self._make_cache(record, kind, network, password)
            fields.update(host=made["host"])
            await self._running(name, made)

    async def _failed(self, record: Item, exc: Exception) -> None:
        """The service could not be made: what AWS made of it and its password go; its record stays,
        ``failed`` with why, until it is deleted or created again."""
        name = str(record["name"])
        message = exc.message if isinstance(exc, RackError) else f"{type(exc).__name__}: {exc}"
        current = await self._current(name)
        if current.get("status") != "creating" or current.get("runner") != self.token:
            return  # another process took the work over (this one's lease lapsed): it ends it
        await self._remove(record, keep_record=True)
        await self._update(
            name, "SET #s = :failed, message = :message", "#s = :creating",
            {":failed": "failed", ":message": message, ":creating": "creating"},
        )  # fmt: skip

    async def _make_cache(self, record: Item, kind: Kind, network: Network, password: str) -> Item:
        name = str(record["name"])

        async def on_group(group: str) -> None:
            await self._update(name, "SET #g = :g", "attribute_exists(#n)", {":g": group})

        host, port = await self.caches.create(
            kind.engine,
            str(record["cache"]),
            version=kind.version,
            port=kind.port,
            network=network,
            password=password,
            tags=self.tags(record),
            group_name=self.stack_name(name),
            on_group=on_group,
        )
        return {"host": host, "port": port}

    async def _remove(self, record: Item, keep_record: bool = False) -> None:
        """Remove everything of the service: what AWS holds of it, its password, its record (unless kept)."""
        name, kind = str(record["name"]), KINDS[record["type"]]
        record = {**record, **await self._current(name)}  # what a cut-short create recorded meanwhile
        if kind.service == "rds":
            await self.databases.delete(name, record["stack"], kind)
        else:
            group = str(record.get("security") or "")
            await self.caches.delete(kind.engine, str(record["cache"]), group, self.stack_name(name))
        if kind.secret:
            with contextlib.suppress(NotFound):
                await self.state.delete_object(self.secret_key(name))
        if keep_record:
            return
        db = await self.state.dynamodb()
        with translated(f"cannot delete service {name}"):
            await db.delete_item(TableName=self.table, Key=to_item({"name": name}))

    async def _current(self, name: str) -> Item:
        db = await self.state.dynamodb()
        with translated(f"cannot read service {name}"):
            found = await db.get_item(TableName=self.table, Key=to_item({"name": name}), ConsistentRead=True)
        return from_item(found["Item"]) if "Item" in found else {}

    # ---- the owner's work on one service ------------------------------------------------------------

    async def _resume(self, record: Item) -> None:
        """A creation whose process died: what AWS is making is waited on; none, or a failure, is undone."""
        name, kind = str(record["name"]), KINDS[record["type"]]
        async with self._leased(name):
            try:
                with log.measure("resource.resume", resource=name, type=kind.name):
                    await self._running(name, await self._made(record, kind))
            except Exception as exc:
                await self._failed(record, exc)

    async def _made(self, record: Item, kind: Kind) -> Item:
        """What AWS made (or goes on making) of the service, once it is done."""
        name = str(record["name"])
        if kind.service != "rds":
            host, port = await self.caches.wait(kind.engine, str(record["cache"]), kind.port)
            return {"host": host, "port": port}
        return await self.databases.wait(name, record["stack"], kind)

    async def _finish_delete(self, record: Item) -> None:
        """A deletion, by the process asked or by the owner taking over one whose process died."""
        name = str(record["name"])
        async with self._leased(name):
            with log.measure("resource.delete", resource=name, type=record["type"]):
                await self._remove(record)
