"""A client of one Docker Engine, wherever it is: this host's (a unix socket, plain TCP) or a container
instance's over mutual TLS (the aws provider). The only module of :mod:`shared.provider.engine` that speaks
to aiodocker; vendor errors become rack errors here.

What exec, attached runs and stats need from an engine is a typed method of :class:`Engine`; raw hijacked
connections (a process's stdio) are opened by :meth:`Engine.connect` over the same transport as every other
call: a unix socket, TCP, or TLS with half-close (:mod:`shared.provider.engine.tls`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Required, TypedDict, final

import aiodocker
import aiohttp
from yarl import URL

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable

TIMEOUT = 30.0
"""The default for one call to the Engine (``RACK_LOCAL_DOCKER_TIMEOUT``); past it the call is a 503."""
UNREACHABLE = "docker engine unreachable"
"""How every error for an engine that refuses, drops or does not answer begins (the 503s' message)."""


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn aiodocker and connection errors into the rack's errors, naming ``what`` was asked for."""
    try:
        yield
    except aiodocker.DockerError as exc:
        message = str(exc.message) if exc.message else f"docker error {exc.status}"
        if exc.status == 900:  # aiodocker's "cannot connect"
            raise Unavailable(f"{UNREACHABLE} (it refused the connection)") from None
        if exc.status == 404:
            raise NotFound(f"{what}: not found") from None
        if exc.status == 409:
            raise Conflict(f"{what}: {message}") from None
        if exc.status == 400:
            raise BadRequest(f"{what}: {message}") from None
        raise RackError(f"{what}: {message}", status=502) from None
    except TimeoutError:  # aiohttp's timeouts too (ServerTimeoutError is one)
        raise Unavailable(f"{UNREACHABLE}: it did not answer {what} in time") from None
    except ssl.SSLError as exc:
        raise Unavailable(f"{UNREACHABLE}: TLS failed ({exc.reason or type(exc).__name__})") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Unavailable(f"{UNREACHABLE} ({type(exc).__name__})") from None


class EndpointSettings(TypedDict, total=False):
    """A container's place on one network."""

    IPAddress: str
    Aliases: list[str] | None
    NetworkID: str


class PortBinding(TypedDict, total=False):
    HostIp: str
    HostPort: str


class PublishedPort(TypedDict, total=False):
    """A port of a container as ``GET /containers/json`` lists it."""

    IP: str
    PrivatePort: int
    PublicPort: int
    Type: str


class SummaryNetworkSettings(TypedDict, total=False):
    Networks: dict[str, EndpointSettings]


class SummaryHostConfig(TypedDict, total=False):
    NetworkMode: str


class ContainerRef(TypedDict):
    """What every answer about a container has: its id (all the rack reads of a container it only names)."""

    Id: str


@final
class ContainerSummary(ContainerRef, total=False):
    """An entry of ``GET /containers/json``, the fields the rack reads (``Command``, in every entry, is what
    tells it from a :class:`ContainerInfo`)."""

    Names: list[str]
    Image: str
    Command: Required[str]
    Created: int
    """Epoch seconds."""
    Labels: dict[str, str]
    State: str
    """``created``, ``running``, ``restarting``, ``exited``, ``paused``, ``dead``."""
    Status: str
    """What ``docker ps`` shows (``Up 2 minutes``)."""
    Ports: list[PublishedPort]
    HostConfig: SummaryHostConfig
    NetworkSettings: SummaryNetworkSettings


class ContainerState(TypedDict, total=False):
    Status: str
    Running: bool
    Restarting: bool
    OOMKilled: bool
    Pid: int
    ExitCode: int
    Error: str
    StartedAt: str
    FinishedAt: str


class ContainerConfig(TypedDict, total=False):
    Image: str
    """The image as it was asked for (a tag)."""
    Labels: dict[str, str] | None
    Env: list[str] | None
    Cmd: list[str] | None
    Tty: bool
    OpenStdin: bool
    User: str


class RestartPolicy(TypedDict, total=False):
    Name: str
    MaximumRetryCount: int


class HostConfig(TypedDict, total=False):
    NetworkMode: str
    Memory: int
    RestartPolicy: RestartPolicy


class NetworkSettings(TypedDict, total=False):
    Networks: dict[str, EndpointSettings]
    Ports: dict[str, list[PortBinding] | None]
    """``PORT/PROTO`` -> its published bindings (None for a port only exposed)."""


@final
class ContainerInfo(ContainerRef, total=False):
    """A container as ``GET /containers/ID/json`` describes it, the fields the rack reads."""

    Name: str
    Created: str
    """An RFC 3339 time."""
    Path: str
    Args: list[str]
    Image: str
    """The image's id."""
    State: ContainerState
    RestartCount: int
    Config: ContainerConfig
    HostConfig: HostConfig
    NetworkSettings: NetworkSettings


def labels_of(container: ContainerSummary | ContainerInfo) -> dict[str, str]:
    """A container's labels, from its list entry or its inspect document."""
    if "Command" in container:
        return container.get("Labels") or {}
    return (container.get("Config") or {}).get("Labels") or {}


class ExecInfo(TypedDict, total=False):
    """An exec as ``GET /exec/ID/json`` describes it, the fields the rack reads."""

    ID: str
    ContainerID: str
    Running: bool
    ExitCode: int | None
    """None until the exec has ended."""
    Pid: int


class ContainerStats(TypedDict, total=False):
    """One sample of ``GET /containers/ID/stats`` (its CPU and memory figures; their keys vary by cgroup)."""

    read: str
    cpu_stats: dict[str, Any]
    precpu_stats: dict[str, Any]
    memory_stats: dict[str, Any]


class Engine:
    """One aiodocker client, opened on first use.

    Every call has a time limit: ``timeout`` seconds for a request and its answer (a hung engine makes it
    a 503, never a request or a lock held for good); streams have a limit to connect and run as long as
    they last. ``tls`` (a client context: the rack's certificate, the engines' CA) makes it an engine
    reached over mutual TLS at ``url`` (``https://HOST:PORT``)."""

    def __init__(self, url: str | None, timeout: float = TIMEOUT, tls: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.tls = tls
        self._client: aiodocker.Docker | None = None

    @property
    def local(self) -> bool:
        """Whether the engine's processes may be this host's (a unix socket): only then are they looked up in
        this host's /proc, and signalled from here."""
        return self.tls is None and isinstance(self.client.connector, aiohttp.UnixConnector)

    @property
    def limits(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 10.0))

    def streaming(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(sock_connect=min(self.timeout, 10.0))

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            self._client = aiodocker.Docker(url=self.url, timeout=self.limits, ssl_context=self.tls)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- raw connections (a process's stdio) ------------------------------------------------------------

    async def connect(self, factory: Callable[[], asyncio.BufferedProtocol]) -> tuple[asyncio.Transport, Any]:
        """A new connection to the engine for a hijacked stream, where the client connects: a unix socket,
        plain TCP, or TLS (half-closable: stdin EOF is TLS's close_notify, the read side goes on)."""
        loop = asyncio.get_running_loop()
        connector = self.client.connector
        url = URL(self.client.docker_host)
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(connector, aiohttp.UnixConnector):
                    return await loop.create_unix_connection(factory, connector.path)
                if self.tls is not None and url.host:
                    from shared.provider.engine.tls import open_tls

                    return await open_tls(factory, url.host, url.port or 2376, self.tls)
                if url.scheme in ("http", "tcp") and url.host:
                    return await loop.create_connection(factory, url.host, url.port or 2375)
        except TimeoutError:
            raise Unavailable(f"{UNREACHABLE}: it did not answer in time") from None
        except ssl.SSLError as exc:
            raise Unavailable(f"{UNREACHABLE}: TLS failed ({exc.reason or type(exc).__name__})") from None
        except OSError as exc:
            raise Unavailable(f"{UNREACHABLE} ({type(exc).__name__})") from None
        raise Unavailable(f"streams need the docker engine on a unix socket, tcp or tls, not {url.scheme}")

    # ---- containers -------------------------------------------------------------------------------------

    async def containers(self, labels: dict[str, str], all: bool = False) -> list[ContainerSummary]:
        """The containers with all of ``labels`` (running ones, or ``all``)."""
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        async with translated("containers"):
            found: list[ContainerSummary] = await self.client._query_json(
                "containers/json", params={"all": all, "filters": filters}
            )
        return found

    async def inspect(self, container_id: str) -> ContainerInfo:
        async with translated(f"process {container_id}"):
            info: ContainerInfo = await self.client._query_json(f"containers/{container_id}/json")
        return info

    async def remove(self, container_id: str) -> None:
        async with translated(f"process {container_id}"):
            await self.client.containers.container(container_id).delete(force=True, v=True)

    async def create(self, config: dict[str, Any], name: str | None = None) -> str:
        """Create a container (not started); its id."""
        async with translated(f"image {config.get('Image', '')}"):
            created = await self.client._query_json(
                "containers/create", method="POST", data=config, params={"name": name} if name else None
            )
        return str(created["Id"])

    async def start(self, container_id: str) -> None:
        async with translated(f"container {container_id}"):
            await self.client._query_json(f"containers/{container_id}/start", method="POST")

    async def kill(self, container_id: str, signal: str, what: str = "") -> None:
        """Send ``signal`` (``SIGHUP``, ``SIGKILL``) to the container's init; a container that is not running
        is a :class:`Conflict`."""
        async with translated(what or f"process {container_id[:12]}"):
            await self.client._query_json(f"containers/{container_id}/kill", method="POST", params={"signal": signal})

    async def watch_exit(self, container_id: str, what: str = "") -> aiohttp.ClientResponse:
        """The engine's answer to ``wait`` (``condition=next-exit``); its body comes when the container exits
        (only connecting is limited in time)."""
        async with translated(what or f"process {container_id[:12]}"):
            response: aiohttp.ClientResponse = await self.client._do_query(
                f"containers/{container_id}/wait",
                method="POST",
                params={"condition": "next-exit"},
                timeout=self.streaming(),
            )
        return response

    async def resize(self, path: str, width: int, height: int, what: str) -> None:
        """Resize a TTY: ``path`` is ``containers/ID/resize`` or ``exec/ID/resize``."""
        async with (
            translated(what),
            self.client._query(path, method="POST", params={"h": height, "w": width}),
        ):
            pass

    async def has_path(self, container_id: str, path: str) -> bool:
        """Whether the container has ``path`` (``HEAD /containers/{id}/archive``); False when it cannot tell."""
        try:
            async with self.client._query(
                f"containers/{container_id}/archive", method="HEAD", params={"path": path}
            ) as response:
                return bool(response.status == 200)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, ssl.SSLError):
            return False

    async def stats_once(self, container_id: str) -> ContainerStats:
        """One sample of a container's figures, at once (``one-shot``: without the previous tick). The engine
        ends the answer empty (200, no document) when the container stops or goes while it answers: that is
        a Conflict (not running), as a stopped container is."""
        async with translated(f"process {container_id[:12]}"):
            stats: ContainerStats | None = await self.client._query_json(
                f"containers/{container_id}/stats", params={"stream": "false", "one-shot": "true"}
            )
        if not isinstance(stats, dict):
            raise Conflict(f"process {container_id[:12]} is not running: the engine sent no figures")
        return stats

    async def command_line(self, container_id: str, pid: int) -> str | None:
        """The command line of process ``pid`` (a pid of the engine's host) of the container, as the engine's
        ``top`` shows it; None once it is gone. What this host's /proc tells of a local engine's process."""
        async with translated(f"process {container_id[:12]}"):
            found = await self.client._query_json(f"containers/{container_id}/top", params={"ps_args": "-o pid,args"})
        for row in found.get("Processes") or []:
            if row and str(row[0]).strip() == str(pid):
                return " ".join(str(part) for part in row[1:])
        return None

    # ---- exec -------------------------------------------------------------------------------------------

    async def exec_create(self, container_id: str, body: dict[str, Any], what: str) -> str:
        async with translated(what):
            created = await self.client._query_json(f"containers/{container_id}/exec", method="POST", data=body)
        return str(created["Id"])

    async def exec_inspect(self, exec_id: str, what: str) -> ExecInfo:
        async with translated(what):
            info: ExecInfo = await self.client._query_json(f"exec/{exec_id}/json")
        return info

    async def exec_detached(self, container_id: str, cmd: list[str], user: str = "", what: str = "") -> str:
        """Run ``cmd`` in the container, detached, its output discarded; the exec's id (to inspect it)."""
        body: dict[str, Any] = {"AttachStdout": False, "AttachStderr": False, "Cmd": cmd}
        if user:
            body["User"] = user
        what = what or f"process {container_id[:12]}"
        exec_id = await self.exec_create(container_id, body, what)
        async with translated(what):
            await self.client._query_json(f"exec/{exec_id}/start", method="POST", data={"Detach": True, "Tty": False})
        return exec_id
