"""Formation on the local provider: roll-outs, scale, balancers, and adoption after a restart.

Each process type of the active release runs ``count`` containers of its image on the rack's network
(where it resolves as ``TYPE.APP``), with the app's environment, a memory limit and Docker's restart
policy (so a container that exits is restarted with back-off and the count holds). A roll-out starts the
new containers and waits for their health checks before the balancers switch and the old ones stop, so a
failed roll-out leaves the previous release serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable
from shared.logfmt import Logger
from shared.manifest import Health, Manifest, Volume, resolve_manifest
from shared.models import App, Formation, FormationUpdate, Release
from shared.provider.local.apps import LocalApps
from shared.provider.local.balancer import ListenerSpec
from shared.provider.local.balancers import Balancers
from shared.provider.local.certificates import AppCertificates, ListenerTLS
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_RELEASE, LABEL_TYPE, Docker
from shared.provider.local.events import Events
from shared.provider.local.images import image_name
from shared.provider.local.releases import LocalReleases
from shared.provider.local.state import State

log = Logger("formation")
LABEL_MEMORY = "convox.memory"
LABEL_GRACE = "convox.grace"
"""Seconds between SIGTERM and SIGKILL when the process stops (the manifest's termination.grace)."""
LABEL_DRAIN = "convox.drain"
"""Seconds the balancer lets the process's open connections finish (the manifest's drain)."""
REFRESH_SECONDS = 2.0
DRAIN_SECONDS = 30.0
"""How long a retired process keeps serving the connections its balancer opened to it before it stops."""
MB = 1024 * 1024
ALIVE = ("running", "restarting")
"""States of a process that holds its place in the count (the Engine restarts one that exits by itself)."""
RECONCILE_SECONDS = 10.0
"""How often formation is checked without an Engine event (the event stream may be down)."""
RECONCILE_DEBOUNCE = 0.5
INTERRUPTED = "interrupted by a restart of the rack"


@dataclass
class Desired:
    """What one process type of a release should be running."""

    service: str
    image: str
    count: int
    memory: int
    env: dict[str, str]
    command: list[str] | None
    port: int | None
    public: bool
    health: Health | None
    balancer_port: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)
    grace: int = 30
    drain: int = int(DRAIN_SECONDS)
    other_ports: list[int] = field(default_factory=list)
    """The type's container ports besides the main one, all reachable on the rack network."""
    extra_listeners: list[tuple[int, int]] = field(default_factory=list)
    """(container port, asked balancer port) of the public ports besides the main one: a listener each."""
    tls_ports: dict[int, str] = field(default_factory=dict)
    """Container port -> ``https`` or ``tls``: the ports whose listener terminates TLS (the app's certificate)."""
    stop_first: bool = False
    """``singleton`` (or ``deployment.maximum`` of 100): the old processes stop before new ones start."""


def _seconds(label: str | None, default: float) -> float:
    """A drain or grace time from a container's label (containers made before the label have the default)."""
    return int(label) if label is not None and label.isdigit() else default


def manifest_of(release: Release) -> Manifest:
    if not release.manifest:
        raise BadRequest(f"release {release.id} has no build to run")
    return resolve_manifest(Manifest.model_validate_json(release.manifest), release.env)


def endpoint(host: str, port: int, protocol: str = "") -> str:
    """Where a client connects: ``host:port``, or ``https://host:port`` (``tls://``) where TLS terminates."""
    return f"{protocol}://{host}:{port}" if protocol in ("https", "tls") else f"{host}:{port}"


def container_ip(container: dict[str, Any], network: str) -> str:
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    return str((networks.get(network) or {}).get("IPAddress") or "")


class LocalFormation:
    def __init__(
        self,
        state: State,
        docker: Docker,
        apps: LocalApps,
        releases: LocalReleases,
        rack: str,
        balancer_host: str,
        lb: Balancers,
        certificates: AppCertificates,
    ) -> None:
        self.state = state
        self.docker = docker
        self.apps = apps
        self.releases = releases
        self.rack = rack
        self.balancer_host = balancer_host
        self.network = f"convox-{rack}"
        self.lb = lb
        self.certificates = certificates
        self.balancers: dict[tuple[str, str], ListenerSpec] = {}
        self.extra: dict[tuple[str, str, int], int] = {}
        """(app, service, asked balancer port) -> the port of each further public listener of a type."""
        """The listener of each public process type, as last put to the balancer process."""
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.damaged: set[str] = set()
        """Apps skipped at start (their records are damaged): not reconciled."""
        self.pending: set[str] = set()
        """Apps whose reconciliation is about to run (one pass for a burst of events)."""
        self.rolling: dict[str, asyncio.Task[None]] = {}
        """The roll-out in progress per app (what `convox apps cancel` stops)."""
        self.switching: set[str] = set()
        """Apps whose roll-out has switched its balancers: too late to cancel."""
        self.closing = False
        """The service is stopping: a roll-out cut short now is interrupted (adoption finishes it), not cancelled."""
        self.events = Events(state)
        releases.formation = self

    # ---- desired state -------------------------------------------------------------------------

    async def _overrides(self, app: str) -> dict[str, dict[str, Any]]:
        rows = await self.state.fetch_all("SELECT * FROM formation WHERE app = ?", (app,))
        return {row["service"]: dict(row) for row in rows}

    async def desired(self, release: Release, patch: dict[str, FormationUpdate] | None = None) -> list[Desired]:
        """What each process type of ``release`` should run: the manifest's scale, the saved overrides on
        top, then ``patch`` (a change being tried, saved only once it runs)."""
        manifest = manifest_of(release)
        overrides = await self._overrides(release.app)
        for name, update in (patch or {}).items():
            changed = overrides.setdefault(name, {})
            for key, value in update.model_dump(exclude_none=True).items():
                changed[key] = value
        wanted = []
        for name, service in sorted(manifest.services.items()):
            override = overrides.get(name, {})
            env = manifest.service_environment(name, release.env, release.app)
            if service.port is not None:
                env.setdefault("PORT", str(service.port))
            if service.image:
                image = service.image
            elif release.build:
                image = image_name(self.rack, release.app, name, release.build)
            else:
                raise BadRequest(f"release {release.id} has no build for {name}")
            command = service.command
            wanted.append(
                Desired(
                    service=name,
                    image=image,
                    count=service.scale.count if override.get("count") is None else int(override["count"]),
                    memory=service.scale.memory if override.get("memory") is None else int(override["memory"]),
                    env=env,
                    command=["sh", "-c", command] if isinstance(command, str) else command,
                    port=service.port,
                    public=bool(service.ports) and service.ports[0].public,
                    health=service.health,
                    balancer_port=override.get("balancer_port"),
                    volumes=service.volumes,
                    grace=service.termination_grace,
                    drain=service.drain,
                    other_ports=[mapping.container for mapping in service.ports[1:]],
                    extra_listeners=[(m.container, m.balancer or m.container) for m in service.ports[1:] if m.public],
                    tls_ports={m.container: m.protocol for m in service.ports if m.public and m.tls},
                    stop_first=service.singleton or service.deployment.maximum <= 100,
                )
            )
        return wanted

    # ---- containers ------------------------------------------------------------------------------

    async def _containers(self, app: str, all: bool = False) -> list[dict[str, Any]]:
        found = await self.docker.containers({LABEL_RACK: self.rack, LABEL_APP: app}, all=all)
        return [c for c in found if (c.get("Labels") or {}).get(LABEL_ONEOFF) != "true"]

    async def _start(self, release: Release, want: Desired) -> dict[str, Any]:
        labels = {
            LABEL_RACK: self.rack,
            LABEL_APP: release.app,
            LABEL_TYPE: want.service,
            LABEL_RELEASE: release.id,
            LABEL_MEMORY: str(want.memory),
            LABEL_GRACE: str(want.grace),
            LABEL_DRAIN: str(want.drain),
        }
        config: dict[str, Any] = {
            "Image": want.image,
            "Env": [f"{key}={value}" for key, value in sorted(want.env.items())],
            "Labels": labels,
            "HostConfig": {
                "Memory": want.memory * MB,
                "MemorySwap": want.memory * MB,
                "RestartPolicy": {"Name": "unless-stopped"},
                "NetworkMode": self.network,
                "Init": True,
                "LogConfig": {"Type": "local"},  # keeps bytes that are not UTF-8 (json-file makes them U+FFFD)
            },
            "NetworkingConfig": {"EndpointsConfig": {self.network: {"Aliases": [f"{want.service}.{release.app}"]}}},
        }
        if want.volumes:
            config["HostConfig"]["Mounts"] = await self._volumes(release.app, want)
        if want.command:
            config["Cmd"] = want.command
        if want.port:
            config["ExposedPorts"] = {f"{port}/tcp": {} for port in (want.port, *want.other_ports)}
        name = f"{self.rack}-{release.app}-{want.service}-{secrets.token_hex(3)}"
        container = await self.docker.run(config, name=name)
        log.log("process.start", app=release.app, service=want.service, release=release.id, id=container["Id"][:12])
        return container

    def volume_name(self, app: str, service: str, volume: str) -> str:
        """A named volume per app and process type: kept across releases, roll-outs and rack restarts."""
        return f"{self.rack}-{app}-{service}-{volume}"

    async def _volumes(self, app: str, want: Desired) -> list[dict[str, Any]]:
        mounts = []
        for volume in want.volumes:
            name = self.volume_name(app, want.service, volume.name)
            await self.docker.volume_create(name, {LABEL_RACK: self.rack, LABEL_APP: app, LABEL_TYPE: want.service})
            mounts.append({"Type": "volume", "Source": name, "Target": volume.path})
        return mounts

    async def forget_volumes(self, app: str) -> None:
        """Remove the app's volumes (its containers are gone: the app is being deleted)."""
        for name in await self.docker.volumes({LABEL_RACK: self.rack, LABEL_APP: app}):
            await self.docker.volume_remove(name)

    async def _healthy(self, container: dict[str, Any], want: Desired) -> None:
        """Wait until a new container passes its health check: HTTP GET on ``health`` when the manifest gives
        one, else a TCP connect to its port; a type without a port needs only to keep running."""
        health = want.health or Health()
        deadline = asyncio.get_running_loop().time() + health.grace + 3 * health.timeout + 2
        first = True
        pause = 0.05  # a fresh process usually answers within a few tenths of a second: look soon, then back off
        while True:
            info = await self.docker.inspect(container["Id"])
            state = info.get("State") or {}
            if not state.get("Running") or state.get("Restarting"):
                code = state.get("ExitCode")
                await self._event(container, f"{want.service} failed its health check (exited with code {code})")
                raise RackError(f"{want.service} exited with code {code} before it was healthy")
            if want.port is None:
                if not first:  # a type without a port: still running after its first look
                    return
                pause = 1.0
            elif await self._check(container_ip(info, self.network), want.port, want.health):
                return
            first = False
            if asyncio.get_running_loop().time() > deadline:
                what = f"GET {want.health.path}" if want.health else f"TCP {want.port}"
                await self._event(container, f"{want.service} failed its health check ({what})")
                raise RackError(f"{want.service} failed its health check ({what})")
            await asyncio.sleep(pause)
            pause = min(pause * 2, float(health.interval), 1.0)

    async def _event(self, container: dict[str, Any], message: str) -> None:
        labels = (container.get("Config") or {}).get("Labels") or {}
        app, release = labels.get(LABEL_APP, ""), labels.get(LABEL_RELEASE, "")
        await self.events.emit(app, message, release=release, pid=container["Id"])

    @staticmethod
    async def _check(ip: str, port: int, health: Health | None) -> bool:
        if not ip:
            return False
        if health is None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
            except (OSError, TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        try:
            async with httpx.AsyncClient(timeout=health.timeout) as client:
                response = await client.get(f"http://{ip}:{port}{health.path}")
        except httpx.HTTPError:
            return False
        return response.status_code < 400

    async def _tls(self, app: str, protocol: str | None) -> ListenerTLS | None:
        """The app's certificate for a listener of an ``https``/``tls`` port (made once, then kept)."""
        if protocol not in ("https", "tls"):
            return None
        return await self.certificates.ensure(app, ["http/1.1"] if protocol == "https" else [])

    async def _balancer(self, app: str, want: Desired, backends: list[tuple[str, int]]) -> None:
        """Put the listener of ``want``'s main port (on its kept port) with these backends; keep the port it got."""
        service = want.service
        known = self.balancers.get((app, service))
        protocol = want.tls_ports.get(want.port or 0, "")
        spec = ListenerSpec(
            name=f"{service}.{app}",
            host=self.balancer_host,
            port=known.port if known is not None else want.balancer_port or 0,
            backends=backends,
            tls=await self._tls(app, protocol),
        )
        spec.port = await self.lb.put(spec)
        self.balancers[(app, service)] = spec
        if known is None or known.port != spec.port or known.tls != spec.tls:
            await self.state.execute(
                "INSERT INTO formation (app, service, balancer_port, balancer_scheme) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app, service) DO UPDATE SET balancer_port = excluded.balancer_port, "
                "balancer_scheme = excluded.balancer_scheme",
                (app, service, spec.port, protocol),
            )

    async def _extra_listeners(self, app: str, want: Desired, containers: list[dict[str, Any]]) -> None:
        """A listener for each public port of ``want`` besides the main one (``443:3001``), named
        ``web.myapp:443`` (the balancer process keeps its port across restarts); ones no longer asked for go."""
        asked = {balancer for _, balancer in want.extra_listeners}
        for container_port, balancer in want.extra_listeners:
            spec = ListenerSpec(
                name=f"{want.service}.{app}:{balancer}",
                host=self.balancer_host,
                port=self.extra.get((app, want.service, balancer), 0),
                backends=await self._backends(containers, container_port),
                tls=await self._tls(app, want.tls_ports.get(container_port)),
            )
            self.extra[(app, want.service, balancer)] = await self.lb.put(spec)
        for key in [k for k in self.extra if k[:2] == (app, want.service) and k[2] not in asked]:
            del self.extra[key]
            with contextlib.suppress(RackError):
                await self.lb.delete(f"{want.service}.{app}:{key[2]}")

    async def _drop_balancer(self, app: str, service: str) -> None:
        self.balancers.pop((app, service), None)
        await self.lb.delete(f"{service}.{app}")
        await self.state.execute(
            "UPDATE formation SET balancer_port = NULL, balancer_scheme = '' WHERE app = ? AND service = ?",
            (app, service),
        )

    # ---- convergence -----------------------------------------------------------------------------

    async def converge(
        self,
        release: Release,
        only: str | None = None,
        patch: dict[str, FormationUpdate] | None = None,
        fresh: bool = False,
    ) -> None:
        """Make the app run ``release``: start what is missing, health-check it, switch the balancers,
        then stop everything else (other releases, surplus, other memory). Nothing old stops until every
        new container is healthy; on a failure the new containers are removed and the error raised. A
        process the Engine is restarting (its restart policy, with back-off) counts as there. ``fresh``
        replaces every process in scope, even those that already run the release (a restart)."""
        app = release.app
        wanted = [w for w in await self.desired(release, patch) if only is None or w.service == only]
        await self.docker.ensure_network(self.network, {LABEL_RACK: self.rack})
        current = [c for c in await self._containers(app) if c.get("State") in ALIVE]
        keep: dict[str, list[dict[str, Any]]] = {}
        started: list[dict[str, Any]] = []
        try:
            for want in wanted:
                matching = [
                    c
                    for c in current
                    if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service
                    and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
                    and (c.get("Labels") or {}).get(LABEL_MEMORY) == str(want.memory)
                ]
                keep[want.service] = [] if fresh else matching[: want.count]
                if want.stop_first and want.count > len(keep[want.service]):
                    await self._stop_first(app, want, current, keep[want.service])
                for _ in range(want.count - len(keep[want.service])):
                    container = await self._start(release, want)
                    started.append(container)
                    keep[want.service].append(container)
            await asyncio.gather(
                *(
                    self._healthy(c, want)
                    for want in wanted
                    for c in keep[want.service]
                    if any(c["Id"] == s["Id"] for s in started)
                )
            )
        except BaseException:
            await asyncio.gather(*(self.docker.remove(c["Id"]) for c in started), return_exceptions=True)
            raise
        self.switching.add(app)
        for want in wanted:
            if want.public and want.port:
                backends = await self._backends(keep[want.service], want.port)
                await self._balancer(app, want, backends)
            elif (app, want.service) in self.balancers:
                await self._drop_balancer(app, want.service)
            await self._extra_listeners(app, want, keep[want.service])
        kept = {c["Id"] for containers in keep.values() for c in containers}
        scope = {want.service for want in wanted}
        retire = [
            c
            for c in await self._containers(app, all=True)
            if c["Id"] not in kept and (only is None or (c.get("Labels") or {}).get(LABEL_TYPE) in scope)
        ]
        await asyncio.gather(*(self._retire(app, c) for c in retire), return_exceptions=True)
        if only is None:
            for app_name, service in list(self.balancers):
                if app_name == app and service not in scope:
                    await self._drop_balancer(app, service)
            for app_name, service, asked in list(self.extra):
                if app_name == app and service not in scope:
                    del self.extra[(app_name, service, asked)]
                    with contextlib.suppress(RackError):
                        await self.lb.delete(f"{service}.{app}:{asked}")

    async def _stop_first(
        self, app: str, want: Desired, current: list[dict[str, Any]], kept: list[dict[str, Any]]
    ) -> None:
        """A singleton type never runs twice: its other processes stop (drained) before a new one starts."""
        ids = {c["Id"] for c in kept}
        others = [
            c for c in current if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service and c["Id"] not in ids
        ]
        await asyncio.gather(*(self._retire(app, c) for c in others))

    async def _retire(self, app: str, container: dict[str, Any]) -> None:
        """Stop a process once the connections its balancer holds open to it are done (or drain time ends)."""
        labels = container.get("Labels") or {}
        service = labels.get(LABEL_TYPE, "")
        ip = container_ip(container, self.network)
        if (app, service) in self.balancers and ip:
            names = [f"{service}.{app}"] + [f"{s}.{a}:{b}" for a, s, b in self.extra if (a, s) == (app, service)]
            with contextlib.suppress(RackError):
                await asyncio.gather(
                    *(self.lb.drained(name, ip, _seconds(labels.get(LABEL_DRAIN), DRAIN_SECONDS)) for name in names)
                )
        await self.docker.stop(container["Id"], grace=int(_seconds(labels.get(LABEL_GRACE), 10)))

    async def _backends(self, containers: list[dict[str, Any]], port: int) -> list[tuple[str, int]]:
        backends = []
        for container in containers:
            ip = container_ip(await self.docker.inspect(container["Id"]), self.network)
            if ip:
                backends.append((ip, port))
        return backends

    # ---- the contract ----------------------------------------------------------------------------

    def _lock(self, app: str) -> asyncio.Lock:
        return self.locks.setdefault(app, asyncio.Lock())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def promote(self, release: Release) -> App:
        app = await self.apps.get(release.app)
        if app.status == "updating" or self._lock(release.app).locked():
            raise Conflict(f"app {release.app} is already updating")
        await self.desired(release)  # a manifest or environment problem is a 400 now, before anything changes
        await self.apps.set_status(release.app, "updating")
        await self.apps.rollouts.record(release.app, release.id, "updating")
        task: asyncio.Task[None] = asyncio.create_task(self._rollout(release))
        self.tasks.add(task)
        self.rolling[release.app] = task

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            if self.rolling.get(release.app) is finished:
                del self.rolling[release.app]

        task.add_done_callback(done)
        return await self.apps.get(release.app)

    async def _ended(self, release: Release, outcome: str, message: str) -> None:
        """A roll-out that did not finish: the previous release (if any) goes on serving, so the app is
        ``running`` (``failed`` when nothing serves); the roll-out is remembered with its reason."""
        serving = (await self.apps.get(release.app)).release
        await self.apps.set_status(release.app, "running" if serving else "failed")
        await self.apps.rollouts.record(release.app, release.id, outcome, message)

    async def _rollout(self, release: Release) -> None:
        async with self._lock(release.app):
            # a failure is logged by measure, and the app's status tells the user
            with contextlib.suppress(Exception), log.measure("release.promote", app=release.app, release=release.id):
                try:
                    await self.converge(release)
                except asyncio.CancelledError:
                    if self.closing:  # left `updating`: the next start's adoption records it as interrupted
                        raise
                    await asyncio.shield(self._ended(release, "cancelled", "cancelled"))
                    await self.events.emit(release.app, "release roll-out cancelled", release=release.id)
                    return
                except Exception as exc:
                    reason = getattr(exc, "message", None) or type(exc).__name__
                    await self._ended(release, "failed", str(reason))
                    await self.events.emit(release.app, f"release failed to roll out: {reason}", release=release.id)
                    raise
                finally:
                    self.switching.discard(release.app)
                await self.apps.set_status(release.app, "running", release=release.id)
                await self.apps.rollouts.record(release.app, release.id, "running")
                await self.events.emit(release.app, "release promoted", release=release.id)

    async def cancel(self, app: str) -> App:
        """Stop the roll-out in progress: its new processes go, the release that was serving stays."""
        await self.apps.get(app)
        task = self.rolling.get(app)
        if task is None or task.done():
            raise Conflict(f"app {app} is not updating: there is no roll-out to cancel")
        if app in self.switching:
            raise Conflict(f"the roll-out of app {app} is already switching to its new release")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.log("release.cancel", app=app)
        return await self.apps.get(app)

    async def restart(self, app: str, service: str | None = None) -> list[Formation]:
        """A rolling restart of the app's processes (of one type): new ones start and pass their health
        checks before the balancers switch and the old ones stop, so nothing is refused meanwhile."""
        current = await self.apps.get(app)
        if not current.release:
            raise BadRequest(f"app {app} has no release yet: deploy it first")
        release = await self.releases.get(app, current.release)
        if service is not None:
            services = manifest_of(release).services
            if service not in services:
                raise NotFound(f"no such process type: {service} (types: {', '.join(sorted(services)) or 'none'})")
        if current.status == "updating" or self._lock(app).locked():
            raise Conflict(f"app {app} is updating: restart it when the roll-out is done")
        async with self._lock(app):
            with log.measure("formation.restart", app=app, service=service or ""):
                try:
                    await self.converge(release, only=service, fresh=True)
                finally:
                    self.switching.discard(app)
            await self.events.emit(app, f"{service or 'every process type'} restarted", release=release.id)
        return await self.get(app)

    async def get(self, app: str) -> list[Formation]:
        current = await self.apps.get(app)
        if not current.release:
            return []
        release = await self.releases.get(app, current.release)
        running = [c for c in await self._containers(app) if c.get("State") == "running"]
        formation = []
        for want in await self.desired(release):
            count = sum(
                1
                for c in running
                if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service
                and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
            )
            balancer = self.balancers.get((app, want.service))
            if want.port is None:
                ports: list[str] = []
            elif want.public and balancer is not None:
                ports = [f"{balancer.port}:{want.port}"]
            else:
                ports = [str(want.port)]
            main = ""
            endpoints = []
            if balancer is not None and want.public:
                main = endpoint(balancer.host, balancer.port, want.tls_ports.get(want.port or 0, ""))
                endpoints.append(main)
            listening = {asked: port for (a, s, asked), port in self.extra.items() if (a, s) == (app, want.service)}
            for container_port in want.other_ports:
                asked = next((b for c, b in want.extra_listeners if c == container_port), None)
                if asked is not None and asked in listening:
                    ports.append(f"{listening[asked]}:{container_port}")
                    protocol = want.tls_ports.get(container_port, "")
                    endpoints.append(endpoint(self.balancer_host, listening[asked], protocol))
                else:
                    ports.append(str(container_port))  # on the rack network
            formation.append(
                Formation(
                    name=want.service,
                    count=want.count,
                    running=count,
                    memory=want.memory,
                    ports=ports,
                    balancer=main,
                    endpoints=endpoints,
                    certificate=await self.certificates.fingerprint(app) if want.tls_ports else "",
                )
            )
        return formation

    async def scale(self, app: str, service: str, update: FormationUpdate) -> Formation:
        current = await self.apps.get(app)
        if not current.release:
            raise BadRequest(f"app {app} has no release yet: deploy it first")
        release = await self.releases.get(app, current.release)
        services = manifest_of(release).services
        if service not in services:
            raise NotFound(f"no such process type: {service} (types: {', '.join(sorted(services)) or 'none'})")
        if update.count is None and update.memory is None:
            raise BadRequest("nothing to change: give a count or a memory")
        async with self._lock(app):
            # tried first, saved once it runs: a change the Engine refuses leaves the formation as it was
            with log.measure("formation.scale", app=app, service=service, count=update.count, memory=update.memory):
                try:
                    await self.converge(release, only=service, patch={service: update})
                finally:
                    self.switching.discard(app)
            await self.state.execute(
                "INSERT INTO formation (app, service, count, memory) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app, service) DO UPDATE SET count = COALESCE(excluded.count, count), "
                "memory = COALESCE(excluded.memory, memory)",
                (app, service, update.count, update.memory),
            )
            changes = (("count", update.count), ("memory", update.memory))
            scaled = ", ".join(f"{key} {value}" for key, value in changes if value is not None)
            await self.events.emit(app, f"{service} scaled: {scaled}", release=release.id)
        return next(f for f in await self.get(app) if f.name == service)

    async def adopt(self) -> None:
        """After a (re)start: keep the running containers, serve the balancers, finish what was cut short
        (a deletion, a roll-out), then keep every count. An app whose records are damaged is skipped: it is
        logged, reported in its own log and marked failed; the others are adopted."""
        for app in await self.apps.list():
            if app.status == "deleting":
                self._spawn(self._finish_delete(app.name))
                continue
            if not app.release:
                if app.status == "updating":
                    await self.apps.set_status(app.name, "failed")
                    for name, rolled in await self.apps.rollouts.interrupted():
                        if name == app.name:
                            await self.apps.rollouts.record(name, rolled, "failed", INTERRUPTED)
                continue
            try:
                release = await self.releases.get(app.name, app.release)
                await self.desired(release)
            except (RackError, ValueError) as exc:  # a missing release, an unreadable manifest
                await self._damaged(app.name, exc)
                continue
            interrupted = app.status == "updating"
            self._spawn(self._adopt(release, interrupted))
        self._spawn(self._refresh())
        self._spawn(self._watch())
        self._spawn(self._poll())

    async def _damaged(self, app: str, exc: Exception) -> None:
        reason = exc.message if isinstance(exc, RackError) else f"its release is unreadable ({type(exc).__name__})"
        self.damaged.add(app)
        log.error("formation.adopt", app=app, damaged="true", message=reason)
        await self.events.emit(app, f"app skipped at start: {reason}")
        with contextlib.suppress(RackError):
            await self.apps.set_status(app, "failed")

    async def _finish_delete(self, app: str) -> None:
        """A deletion cut short by a restart: do it again (every step of it may be done twice)."""
        with log.measure("app.delete.resume", app=app), contextlib.suppress(Exception):
            await self.apps.delete(app)

    # ---- keeping the counts --------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Reconcile an app as soon as one of its processes stops or goes (``convox ps stop``, ``docker kill``,
        ``docker rm -f``); the Engine's event stream, taken again after it drops."""
        filters = {"type": ["container"], "event": ["die", "stop", "destroy"], "label": [f"{LABEL_RACK}={self.rack}"]}
        while True:
            try:
                # from now (a `since` also makes the Engine answer at once rather than at its first event)
                async for event in self.docker.events(filters, since=f"{time.time():.9f}"):
                    labels = (event.get("Actor") or {}).get("Attributes") or {}
                    app = labels.get(LABEL_APP, "")
                    if app and labels.get(LABEL_ONEOFF) != "true" and LABEL_TYPE in labels:
                        self._spawn(self._reconcile_soon(app))
            except RackError:
                await asyncio.sleep(RECONCILE_SECONDS)

    async def _poll(self) -> None:
        """Reconcile every app now and then, for what the event stream missed."""
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            with contextlib.suppress(RackError):
                for app in await self.apps.list():
                    await self.reconcile(app.name)

    async def _reconcile_soon(self, app: str) -> None:
        if app in self.pending:
            return
        self.pending.add(app)
        try:
            await asyncio.sleep(RECONCILE_DEBOUNCE)  # several processes stopped at once: one pass
        finally:
            self.pending.discard(app)
        await self.reconcile(app)

    async def reconcile(self, app: str) -> None:
        """Start what is missing from the active release's counts (a process stopped or killed from outside
        is replaced); nothing while a roll-out or a scale runs (it converges itself), the app is being
        deleted or has no release (nor a damaged one). A failure is logged, and tried again at the next pass."""
        lock = self._lock(app)
        if lock.locked():
            return
        async with lock:
            try:
                current = await self.apps.get(app)
                # a failed roll-out leaves the previous release serving: its counts are kept too
                if current.status not in ("running", "failed") or not current.release or app in self.damaged:
                    return
                release = await self.releases.get(app, current.release)
                alive = [c for c in await self._containers(app) if c.get("State") in ALIVE]
                short = []
                for want in await self.desired(release):
                    have = sum(
                        1
                        for c in alive
                        if (c.get("Labels") or {}).get(LABEL_TYPE) == want.service
                        and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
                        and (c.get("Labels") or {}).get(LABEL_MEMORY) == str(want.memory)
                    )
                    if have < want.count:
                        short.append(f"{want.service} {have}/{want.count}")
                if not short:
                    return
                with log.measure("formation.reconcile", app=app, release=release.id, short=",".join(short)):
                    try:
                        await self.converge(release)
                    finally:
                        self.switching.discard(app)
                await self.events.emit(app, f"processes replaced: {', '.join(short)}", release=release.id)
            except (RackError, ValueError) as exc:
                log.error("formation.reconcile", app=app, message=getattr(exc, "message", None) or str(exc))

    async def _adopt(self, release: Release, interrupted: bool) -> None:
        attempt = 0
        while True:
            async with self._lock(release.app):
                try:
                    await self.converge(release)
                except Unavailable as exc:  # the engine is away: adopt again when it is back
                    log.error("formation.adopt", app=release.app, release=release.id, message=exc.message)
                except Exception as exc:
                    log.error("formation.adopt", app=release.app, release=release.id, message=str(exc))
                    break
                else:
                    break
                finally:
                    self.switching.discard(release.app)
            await asyncio.sleep(min(2.0**attempt, 10.0))
            attempt += 1
        if interrupted:  # the previous release still serves: running, the cut-short roll-out remembered
            with contextlib.suppress(RackError):
                await self.apps.set_status(release.app, "running")
                for app, rolled in await self.apps.rollouts.interrupted():
                    if app == release.app:
                        await self.apps.rollouts.record(app, rolled, "failed", INTERRUPTED)

    async def _refresh(self) -> None:
        """Keep each balancer's backends on the running containers of the active release."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            for app, service in list(self.balancers):
                if self._lock(app).locked():
                    continue
                with contextlib.suppress(RackError, KeyError):
                    current = await self.apps.get(app)
                    release = await self.releases.get(app, current.release)
                    want = next((w for w in await self.desired(release) if w.service == service), None)
                    running = [
                        c
                        for c in await self._containers(app)
                        if c.get("State") == "running"
                        and (c.get("Labels") or {}).get(LABEL_TYPE) == service
                        and (c.get("Labels") or {}).get(LABEL_RELEASE) == release.id
                    ]
                    if want is not None and want.port and (app, service) in self.balancers:
                        await self._balancer(app, want, await self._backends(running, want.port))
                        if want.extra_listeners:
                            await self._extra_listeners(app, want, running)

    async def forget(self, app: str) -> None:
        """The app is being deleted: close its balancers and drop its formation, once a roll-out, scale or
        reconciliation in progress is done (it would start processes after the deletion removed them)."""
        async with self._lock(app):
            for app_name, service in list(self.balancers):
                if app_name == app:
                    await self._drop_balancer(app, service)
            for key in [key for key in self.extra if key[0] == app]:
                del self.extra[key]
            for spec in await self.lb.listeners():  # also those no start of this service adopted yet
                if spec.name.endswith(f".{app}") or spec.name.rpartition(":")[0].endswith(f".{app}"):
                    await self.lb.delete(spec.name)
            await self.state.execute("DELETE FROM formation WHERE app = ?", (app,))

    async def close(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.lb.close()  # the listeners keep serving in the balancer process, for the next start to adopt
        self.balancers.clear()
