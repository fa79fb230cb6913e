"""The balancer listeners of an app's public process types, as the formation puts them to the balancer process.

Each public type has a main listener named ``TYPE.APP`` on its kept port (stored in the ``formation`` table
with its scheme, so it is the same after a restart), and one listener per further public port, named
``TYPE.APP:ASKED`` (``web.myapp:443``). A listener of an ``https``/``tls`` port terminates TLS with the
app's certificate. The listeners live in the balancer process (:mod:`shared.provider.local.balancerd`) and
outlive this service; what is kept here is this service's view of them, rebuilt as it adopts apps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared.errors import RackError
from shared.provider.local.balancer import ListenerSpec
from shared.provider.local.balancers import Balancers
from shared.provider.local.certificates import AppCertificates, ListenerTLS
from shared.provider.local.docker import ContainerRef, Docker
from shared.provider.local.health import container_ip
from shared.provider.local.state import State

if TYPE_CHECKING:
    from shared.provider.local.desired import Desired


def endpoint(host: str, port: int, protocol: str = "") -> str:
    """Where a client connects: ``host:port``, or ``https://host:port`` (``tls://``) where TLS terminates."""
    return f"{protocol}://{host}:{port}" if protocol in ("https", "tls") else f"{host}:{port}"


class Listeners:
    def __init__(
        self, state: State, docker: Docker, lb: Balancers, certificates: AppCertificates, host: str, network: str
    ) -> None:
        self.state = state
        self.docker = docker
        self.lb = lb
        self.certificates = certificates
        self.host = host
        self.network = network
        self.main: dict[tuple[str, str], ListenerSpec] = {}
        """The main listener of each public process type (app, type), as last put to the balancer process."""
        self.extra: dict[tuple[str, str, int], int] = {}
        """(app, type, asked balancer port) -> the port of each further public listener of a type."""
        self.recorded: dict[tuple[str, str], dict[int, tuple[int, str]]] = {}
        """What the ``listeners`` table holds per (app, type): container port -> (balancer port, scheme)."""

    # ---- putting them ------------------------------------------------------------------------------

    async def serve(self, app: str, want: Desired, containers: Sequence[ContainerRef]) -> None:
        """Put the type's listeners on ``containers`` (drop the main one when the type is no longer public)."""
        if want.public and want.port:
            await self.put_main(app, want, await self.backends(containers, want.port))
        elif (app, want.service) in self.main:
            await self.drop(app, want.service)
        await self.put_extra(app, want, containers)
        await self.record(app, want)

    async def put_main(self, app: str, want: Desired, backends: list[tuple[str, int]]) -> None:
        """Put the listener of ``want``'s main port (on its kept port) with these backends; keep the port it got."""
        service = want.service
        known = self.main.get((app, service))
        protocol = want.tls_ports.get(want.port or 0, "")
        spec = ListenerSpec(
            name=f"{service}.{app}",
            host=self.host,
            port=known.port if known is not None else want.balancer_port or 0,
            backends=backends,
            tls=await self._tls(app, protocol),
        )
        spec.port = await self.lb.put(spec)
        self.main[(app, service)] = spec
        if known is None or known.port != spec.port or known.tls != spec.tls:
            await self.state.execute(
                "INSERT INTO formation (app, service, balancer_port, balancer_scheme) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (app, service) DO UPDATE SET balancer_port = excluded.balancer_port, "
                "balancer_scheme = excluded.balancer_scheme",
                (app, service, spec.port, protocol),
            )

    async def put_extra(self, app: str, want: Desired, containers: Sequence[ContainerRef]) -> None:
        """A listener for each public port of ``want`` besides the main one (``443:3001``), named
        ``web.myapp:443`` (the balancer process keeps its port across restarts); ones no longer asked for go."""
        asked = {balancer for _, balancer in want.extra_listeners}
        for container_port, balancer in want.extra_listeners:
            spec = ListenerSpec(
                name=f"{want.service}.{app}:{balancer}",
                host=self.host,
                port=self.extra.get((app, want.service, balancer), 0),
                backends=await self.backends(containers, container_port),
                tls=await self._tls(app, want.tls_ports.get(container_port)),
            )
            self.extra[(app, want.service, balancer)] = await self.lb.put(spec)
        for key in [k for k in self.extra if k[:2] == (app, want.service) and k[2] not in asked]:
            await self._drop_extra(key)

    async def record(self, app: str, want: Desired) -> None:
        """Keep the type's listening ports in the ``listeners`` table (one transaction, only when they changed),
        where every service reads them: ``convox ps`` shows ``PORT:CONTAINER_PORT`` for each."""
        mapping: dict[int, tuple[int, str]] = {}
        main = self.main.get((app, want.service))
        if main is not None and want.port:
            mapping[want.port] = (main.port, want.tls_ports.get(want.port, ""))
        for container_port, asked in want.extra_listeners:
            port = self.extra.get((app, want.service, asked))
            if port:
                mapping[container_port] = (port, want.tls_ports.get(container_port, ""))
        await self._write(app, want.service, mapping)

    async def _write(self, app: str, service: str, mapping: dict[int, tuple[int, str]]) -> None:
        if self.recorded.get((app, service)) == mapping == (await self.listening(app)).get(service, {}):
            return  # (another process, the apps service scaling, may have written since this one did)
        async with self.state.transaction() as tx:
            await tx.execute("DELETE FROM listeners WHERE app = ? AND service = ?", (app, service))
            for container_port, (port, scheme) in sorted(mapping.items()):
                await tx.execute(
                    "INSERT INTO listeners (app, service, container_port, port, scheme) VALUES (?, ?, ?, ?, ?)",
                    (app, service, container_port, port, scheme),
                )
        self.recorded[(app, service)] = mapping

    async def _tls(self, app: str, protocol: str | None) -> ListenerTLS | None:
        """The app's certificate for a listener of an ``https``/``tls`` port (made once, then kept)."""
        if protocol not in ("https", "tls"):
            return None
        return await self.certificates.ensure(app, ["http/1.1"] if protocol == "https" else [])

    async def backends(self, containers: Sequence[ContainerRef], port: int) -> list[tuple[str, int]]:
        backends = []
        for container in containers:
            ip = container_ip(await self.docker.inspect(container["Id"]), self.network)
            if ip:
                backends.append((ip, port))
        return backends

    # ---- dropping them -----------------------------------------------------------------------------

    async def drop(self, app: str, service: str) -> None:
        """The type's main listener goes (its further listeners follow their own manifest entries)."""
        self.main.pop((app, service), None)
        await self.lb.delete(f"{service}.{app}")
        await self.state.execute(
            "UPDATE formation SET balancer_port = NULL, balancer_scheme = '' WHERE app = ? AND service = ?",
            (app, service),
        )

    async def _drop_extra(self, key: tuple[str, str, int]) -> None:
        app, service, asked = key
        del self.extra[key]
        with contextlib.suppress(RackError):
            await self.lb.delete(f"{service}.{app}:{asked}")

    async def drop_others(self, app: str, kept: set[str]) -> None:
        """Every listener of ``app``'s types that are not in ``kept`` goes (types the release no longer has)."""
        for app_name, service in list(self.main):
            if app_name == app and service not in kept:
                await self.drop(app, service)
        for key in [k for k in self.extra if k[0] == app and k[1] not in kept]:
            await self._drop_extra(key)
        for recorded_app, service in list(self.recorded):
            if recorded_app == app and service not in kept:
                await self._write(app, service, {})

    def unview(self, app: str) -> None:
        """Drop this process's view of ``app``'s listeners (another process is deleting them)."""
        for key in [k for k in self.main if k[0] == app]:
            del self.main[key]
        for extra in [k for k in self.extra if k[0] == app]:
            del self.extra[extra]
        for key in [k for k in self.recorded if k[0] == app]:
            del self.recorded[key]

    async def forget(self, app: str) -> None:
        """The app is being deleted: every listener of it goes, also those no start of this service adopted."""
        await self.drop_others(app, set())
        await self.state.execute("DELETE FROM listeners WHERE app = ?", (app,))
        for spec in await self.lb.listeners():
            if spec.name.endswith(f".{app}") or spec.name.rpartition(":")[0].endswith(f".{app}"):
                await self.lb.delete(spec.name)

    async def close(self) -> None:
        """This service stops: the listeners keep serving in the balancer process, for the next start to adopt."""
        await self.lb.close()
        self.main.clear()

    async def drained(self, app: str, service: str, ip: str, seconds: float) -> None:
        """Wait until the connections the type's listeners hold open to the process at ``ip`` are done (at most
        ``seconds``), after taking it out of their backends; nothing to wait for when the type has no balancer."""
        with contextlib.suppress(RackError):
            await asyncio.gather(*(self.lb.drained(name, ip, seconds) for name in self.names(app, service)))

    # ---- reading them ------------------------------------------------------------------------------

    def names(self, app: str, service: str) -> list[str]:
        """The listeners a process of the type is a backend of (empty when the type has no balancer)."""
        if (app, service) not in self.main:
            return []
        return [f"{service}.{app}"] + [f"{s}.{a}:{b}" for a, s, b in self.extra if (a, s) == (app, service)]

    async def listening(self, app: str) -> dict[str, dict[int, tuple[int, str]]]:
        """What the ``listeners`` table says of ``app``'s types: type -> container port -> (port, scheme); the
        same in every process, whichever put the listeners."""
        rows = await self.state.fetch_all(
            "SELECT service, container_port, port, scheme FROM listeners WHERE app = ?", (app,)
        )
        found: dict[str, dict[int, tuple[int, str]]] = {}
        for row in rows:
            found.setdefault(row["service"], {})[row["container_port"]] = (row["port"], row["scheme"])
        return found

    def ports(self, want: Desired, listening: dict[int, tuple[int, str]]) -> tuple[list[str], str, list[str]]:
        """How the type is reached, from its :meth:`listening` ports: its port mappings (``"PORT:CONTAINER"``
        where a listener serves it, else the container port, reachable on the rack network), its main
        endpoint and every endpoint."""
        ports: list[str] = []
        main = ""
        endpoints = []
        if want.port is not None:
            if want.public and want.port in listening:
                port, scheme = listening[want.port]
                ports.append(f"{port}:{want.port}")
                main = endpoint(self.host, port, scheme)
                endpoints.append(main)
            else:
                ports.append(str(want.port))
        for container_port in want.other_ports:
            if container_port in listening:
                port, scheme = listening[container_port]
                ports.append(f"{port}:{container_port}")
                endpoints.append(endpoint(self.host, port, scheme))
            else:
                ports.append(str(container_port))
        return ports, main, endpoints
