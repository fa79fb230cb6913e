"""The only module of the local provider that speaks to aiodocker (with :mod:`shared.provider.engine.docker`,
whose client it extends); vendor errors become rack errors here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote, urlencode

import aiodocker
import aiohttp

from shared.errors import BadRequest, Conflict, NotFound, RackError, Unavailable
from shared.provider.engine.docker import (
    TIMEOUT,
    UNREACHABLE,
    ContainerConfig,
    ContainerInfo,
    ContainerRef,
    ContainerSummary,
    Engine,
    labels_of,
    translated,
)
from shared.provider.engine.receiver import Receiver, request

__all__ = [
    "TIMEOUT",
    "UNREACHABLE",
    "ContainerConfig",
    "ContainerInfo",
    "ContainerRef",
    "ContainerSummary",
    "Docker",
    "Engine",
    "labels_of",
    "translated",
]

LOG_BUFFER = 256 << 10
"""What a followed log's connection buffers of the Engine's messages before it is read."""
LABEL_RACK = "convox.rack"
LABEL_APP = "convox.app"
LABEL_TYPE = "convox.type"
LABEL_RELEASE = "convox.release"
LABEL_ONEOFF = "convox.oneoff"
LABEL_TIMER = "convox.timer"
"""The timer a one-off process runs for."""
LABEL_SANDBOX = "convox.sandbox"
"""On a network sandbox of one-offs (:mod:`shared.provider.local.sandboxes`): the app it serves (it has no
``convox.app``: it is no process of the app)."""
LABEL_RUNNER = "convox.runner"
"""The runner token (:mod:`shared.provider.local.runners`) of the process whose stream or pool holds a container
(an interactive one-off, a network sandbox): the owner of the background work removes it once that process
is dead. Read back as any label is: a value that is no token counts as a dead runner's."""
RACK_LABEL_PREFIX = "convox."
"""The rack's own labels: only the rack sets them on what it makes; an image's copies are overridden."""


class EventActor(TypedDict, total=False):
    ID: str
    Attributes: dict[str, str]


class EngineEvent(TypedDict, total=False):
    """One of the Engine's events (``GET /events``): what happened (``Action``) to what (``Actor``)."""

    Type: str
    Action: str
    Actor: EventActor
    time: int
    timeNano: int
    status: str
    """The ``Action`` of the Engine's older API."""
    id: str
    """The ``Actor``'s ``ID`` of the Engine's older API."""


class EngineVersion(TypedDict, total=False):
    """The Engine's ``GET /version``, the fields the rack reads."""

    Version: str
    ApiVersion: str
    Arch: str
    Os: str


class ImageConfig(TypedDict, total=False):
    Entrypoint: list[str] | None
    Cmd: list[str] | None
    Env: list[str] | None
    Labels: dict[str, str] | None


class ImageInfo(TypedDict, total=False):
    """An image as ``GET /images/NAME/json`` describes it, the fields the rack reads."""

    Id: str
    Config: ImageConfig


class CreatedContainer(TypedDict):
    """The Engine's answer to ``POST /containers/create``."""

    Id: str
    Warnings: list[str] | None


class Docker(Engine):
    """The local provider's engine (:class:`~shared.provider.engine.docker.Engine`, one per provider, opened
    in its lifespan), with what only the local provider asks of it: images, builds, networks, volumes, logs
    and events. Stopping a container has its grace on top of the call's limit."""

    async def image_labels(self, image: str) -> dict[str, str]:
        """The rack's labels (``convox.*``) an image carries (from its base image or a ``LABEL``); none
        when the image is not here."""
        try:
            info = await self.inspect_image(image)
        except NotFound:
            return {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items() if str(k).startswith(RACK_LABEL_PREFIX)}

    async def has_image(self, image: str) -> bool:
        return await self._exists(f"image {image}", lambda: self.client.images.inspect(image))

    async def _exists(self, what: str, lookup: Callable[[], Awaitable[object]]) -> bool:
        """Whether the Engine has ``what``: ``lookup`` answers (False for its 404; any other error raises)."""
        try:
            async with translated(what):
                await lookup()
        except NotFound:
            return False
        return True

    async def registry_has(self, image: str, within: float) -> bool:
        """Whether a registry answers, within ``within`` seconds, that it has ``image``: the Engine asks the
        registry for the image's manifest (``GET /distribution/NAME/json``) and pulls nothing. No registry
        reachable, none answering in time, or one without the image: False. An engine that refuses: 503."""
        try:
            async with asyncio.timeout(within), translated(f"image {image}"):
                await self.client._query_json(
                    f"distribution/{image}/json", timeout=aiohttp.ClientTimeout(total=within + 1.0)
                )
        except TimeoutError:
            return False
        except Unavailable as exc:
            if "in time" not in exc.message:  # the engine itself is gone: a 503, as for every other call
                raise
            return False  # the engine's own limit: the registry held it past the probe
        except RackError:  # the engine's answer for a registry it could not reach, or one without the image
            return False
        return True

    async def run(self, config: dict[str, Any], name: str | None = None) -> ContainerInfo:
        """Create and start a container. The rack's labels on it are the ones in ``config`` only: any that its
        image brings is overridden with an empty value, so that no image steers the rack."""
        inherited = await self.image_labels(str(config.get("Image", "")))
        if inherited:
            own = dict(config.get("Labels") or {})
            config = {**config, "Labels": {**{key: "" for key in inherited}, **own}}
        async with translated(f"image {config.get('Image', '')}"):
            container = await self.client.containers.create(config, name=name)
        async with translated("container"):
            try:
                await container.start()
            except BaseException:
                await container.delete(force=True)
                raise
            return await self.inspect(container.id)

    async def remove_image(self, image: str) -> bool:
        """Untag ``image`` (its layers go when nothing else uses them); False when it was not there or a
        container still uses it."""
        try:
            async with translated(f"image {image}"):
                await self.client.images.delete(image)
        except (NotFound, Conflict):
            return False
        return True

    async def stop(self, container_id: str, grace: int = 10) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds, then remove."""
        async with translated(f"process {container_id}"):
            container = self.client.containers.container(container_id)
            try:
                await container.stop(t=grace, timeout=aiohttp.ClientTimeout(total=grace + self.timeout))
            finally:
                await container.delete(force=True, v=True)

    @functools.cached_property
    def _making_networks(self) -> asyncio.Lock:
        return asyncio.Lock()

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        """The rack's bridge network, where each process type resolves by ``TYPE.APP``. The engine does not
        stop two processes from making two networks of one name (``CheckDuplicate`` is not a lock), and a name
        that two networks share is refused as ambiguous: so the calls of this client wait on each other, and
        a caller that finds more than one keeps the oldest (the one an earlier caller may use already) and
        removes the rest, which every racer does alike."""
        async with self._making_networks, translated(f"network {name}"):
            named = await self._networks_named(name)
            if not named:
                try:
                    await self.client.networks.create(
                        {"Name": name, "Driver": "bridge", "Labels": labels, "CheckDuplicate": True}
                    )
                except aiodocker.DockerError as race:
                    if race.status != 409:
                        raise
                named = await self._networks_named(name)
            for extra in sorted(named, key=_created)[1:]:
                with contextlib.suppress(aiodocker.DockerError):
                    await self.client._query_json(f"networks/{extra['Id']}", method="DELETE")

    async def _networks_named(self, name: str) -> list[dict[str, Any]]:
        """The networks called exactly ``name`` (the engine's name filter matches parts of names)."""
        found = await self.client._query_json("networks", params={"filters": json.dumps({"name": [name]})})
        return [n for n in found if n.get("Name") == name]

    async def ensure_image(self, image: str) -> None:
        """Pull ``image`` unless the engine has it; an image that cannot be had is a 502 naming it."""
        async with translated(f"image {image}"):
            try:
                await self.client.images.inspect(image)
                return
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
        reason = "the pull ended without it"
        try:
            async with translated(f"image {image}"):
                await self.client.images.pull(image)
                await self.client.images.inspect(image)
                return
        except RackError as exc:
            reason = exc.message.removeprefix(f"image {image}: ")
        raise RackError(f"image {image} is not on the engine and could not be pulled: {reason}", status=502)

    async def tail(self, container_id: str, lines: int = 20) -> str:
        """The last ``lines`` of a container's output (stdout and stderr merged)."""
        async with translated(f"container {container_id}"):
            chunks = await self.client.containers.container(container_id).log(stdout=True, stderr=True, tail=lines)
        return "".join(chunks)

    async def volume_create(self, name: str, labels: dict[str, str]) -> None:
        volumes: Any = self.client.volumes  # aiodocker's volume API is untyped
        async with translated(f"volume {name}"):
            await volumes.create({"Name": name, "Labels": labels})

    async def volumes(self, labels: dict[str, str]) -> list[str]:
        """The names of the volumes that carry every one of ``labels``."""
        volumes: Any = self.client.volumes  # aiodocker's volume API is untyped
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        async with translated("volumes"):
            found = await volumes.list(filters=filters)
        return [str(volume["Name"]) for volume in (found or {}).get("Volumes") or []]

    async def volume_users(self, name: str) -> list[str]:
        """The ids of the containers (running or not) that mount the volume ``name``."""
        async with translated("containers"):
            found: list[ContainerSummary] = await self.client._query_json(
                "containers/json", params={"all": True, "filters": {"volume": [name]}}
            )
        return [str(container["Id"]) for container in found]

    async def volume_remove(self, name: str) -> None:
        """Remove a volume; one that is already gone is fine."""
        volume: Any = aiodocker.volumes.DockerVolume(self.client, name)  # type: ignore[no-untyped-call]
        try:
            async with translated(f"volume {name}"):
                await volume.delete()
        except NotFound:
            pass

    async def logs(
        self,
        container_id: str,
        *,
        since: str = "",
        follow: bool = True,
        tty: bool = False,
        tail: int | None = None,
        quiet: float | None = None,
    ) -> AsyncGenerator[bytes]:
        """A container's log as the Engine keeps it, with its timestamps: the logs API's body as it comes
        (:class:`shared.provider.local.splitter.Splitter` makes lines of it).

        Without a TTY it is Docker's framed messages, each ``TIMESTAMP text``; a line longer than 16 KiB comes
        as messages of 16 KiB with the same timestamp. With a TTY the Engine frames nothing. ``since`` is
        ``seconds.nanoseconds``, inclusive. The iterator ends when the log does (with ``follow``, when the
        container stops); a dropped connection raises, never ends silently. ``tail``: only the log's last
        messages. ``quiet``: after this many seconds without a byte, an empty chunk (and so on, every
        ``quiet`` seconds of silence), for the caller to look whether the log went on without this stream:
        Docker's follow of a ``local`` log stops at the file's rotation, silently.

        It is read on a connection of its own, asked in HTTP/1.0: the Engine then sends the body as it is, not
        in chunks (a chunk per message, each parsed apart, was a quarter of the collector's work in a burst).
        Such a body ends with the connection, so a follow that ends while the container still runs is taken
        for the connection dropped.
        """
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if follow else "0"}
        if since:
            params["since"] = since
        if tail is not None:
            params["tail"] = str(tail)
        what = f"process {container_id[:12]}"
        path = f"/containers/{quote(container_id, safe='')}/logs?{urlencode(params)}"
        head = f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode()
        transport, body = await request(self, head, what, functools.partial(Receiver, LOG_BUFFER))
        loop = asyncio.get_running_loop()
        last = loop.time()
        silent = False
        watch: asyncio.TimerHandle | None = None

        def look() -> None:  # one timer per quiet spell, not one per read (a wait with a timeout costs twice)
            nonlocal silent, watch
            if quiet is None:
                return
            idle = loop.time() - last
            if idle >= quiet:
                silent, idle = True, 0.0
                body.interrupt()
            watch = loop.call_later(quiet - idle, look)

        look()
        try:
            while True:
                if body.end > body.start:
                    chunk = bytes(body.buf[body.start : body.end])
                    body.consumed(body.end)
                    last, silent = loop.time(), False
                    yield chunk
                    continue
                if silent:
                    last, silent = loop.time(), False
                    yield b""
                    continue
                if not await body.more():
                    break
            if body.error is not None:
                raise Unavailable(f"{what}: the docker engine broke the log stream ({type(body.error).__name__})")
            if follow and await self._runs(container_id):
                raise Unavailable(f"{what}: the docker engine ended the log stream of a running process")
        finally:  # as for events: a stream closed early (its reader cancelled) must not leak it
            if watch is not None:
                watch.cancel()
            transport.close()

    async def _runs(self, container_id: str) -> bool:
        try:
            state = (await self.inspect(container_id)).get("State") or {}
        except NotFound:
            return False
        return bool(state.get("Running"))

    async def events(self, filters: dict[str, list[str]], since: str = "") -> AsyncIterator[EngineEvent]:
        """The Engine's events matching ``filters`` (from ``since``, ``seconds.nanoseconds``, then live).
        The stream never ends on its own: when the Engine goes away this raises :class:`Unavailable`."""
        params = {"filters": json.dumps(filters)}
        if since:
            params["since"] = since
        async with (
            translated("events"),
            self.client._query("events", params=params, timeout=self.streaming()) as response,
        ):
            try:
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
            finally:  # aiodocker leaves a response it yields open: a stream closed early must not leak it
                response.close()
        raise Unavailable("docker engine: the event stream ended")

    async def exit_codes(self, container_id: str, since: float) -> list[int]:
        """The exit codes of the container's runs that ended from ``since`` (seconds) until now, oldest
        first: its ``die`` events (a container restarted by its policy shows only its new run's state)."""
        filters = {"type": ["container"], "container": [container_id], "event": ["die"]}
        params = {"filters": json.dumps(filters), "since": f"{since:.9f}", "until": f"{max(since, time.time()):.9f}"}
        codes: list[int] = []
        async with (
            translated("events"),
            self.client._query("events", params=params, timeout=self.streaming()) as response,
        ):
            try:
                async for line in response.content:  # with ``until``, the answer ends there
                    if not line.strip():
                        continue
                    attributes = (json.loads(line).get("Actor") or {}).get("Attributes") or {}
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        codes.append(int(attributes["exitCode"]))
            finally:
                response.close()
        return codes

    async def build(
        self,
        context: Path,
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: dict[str, str] | None = None,
        nocache: bool = False,
        labels: dict[str, str] | None = None,
    ) -> AsyncIterator[str]:
        """Build the tar at ``context`` (uncompressed) into ``tag``, yielding docker's output as text while it
        comes. A failing step raises :class:`BadRequest` with docker's message; so does a build whose output
        ends without an image (aiodocker ends the stream silently when the connection drops)."""
        handle = await asyncio.to_thread(open, context, "rb")
        built = False
        try:
            async with translated(f"build {tag}"):
                try:
                    async for item in self.client.images.build(
                        fileobj=handle,
                        encoding="identity",
                        tag=tag,
                        path_dockerfile=dockerfile,
                        buildargs=buildargs or None,
                        nocache=nocache,
                        rm=True,
                        forcerm=True,
                        labels=labels or None,
                        stream=True,
                    ):
                        aux = item.get("aux")
                        if isinstance(aux, dict) and aux.get("ID"):
                            built = True
                        text = build_output(item)
                        if text:
                            yield text
                except aiodocker.DockerStreamError as exc:
                    raise BadRequest(str(exc.message).strip() or "the build failed") from None
                if not built:
                    try:
                        await self.client.images.inspect(tag)
                    except aiodocker.DockerError:
                        raise BadRequest("the build ended without an image") from None
        finally:
            await asyncio.to_thread(handle.close)

    # ---- typed calls of the Engine's API for the provider's modules (the only place its raw API is used) ----

    async def version(self) -> EngineVersion:
        async with translated("docker engine"):
            version: EngineVersion = await self.client._query_json("version")
        return version

    async def inspect_image(self, image: str) -> ImageInfo:
        """An image's description; :class:`NotFound` when the engine does not have it."""
        async with translated(f"image {image}"):
            info: ImageInfo = await self.client._query_json(f"images/{image}/json")
        return info

    async def import_image(self, repo: str, tag: str, tar: bytes, what: str) -> None:
        """Make the image ``repo:tag`` of one layer from the root file system in ``tar`` (``docker import``)."""
        async with (
            translated(what),
            self.client._query(
                "images/create",
                method="POST",
                params={"fromSrc": "-", "repo": repo, "tag": tag},
                data=tar,
                headers={"Content-Type": "application/x-tar"},
            ) as response,
        ):
            await response.read()

    async def has_network(self, name: str) -> bool:
        return await self._exists(f"network {name}", lambda: self.client.networks.get(name))

    async def create_container(self, config: dict[str, Any], name: str) -> CreatedContainer:
        """Create a container from ``config`` as it is (no label of its image overridden: see :meth:`run`)."""
        async with translated(f"image {config.get('Image', '')}"):
            created: CreatedContainer = await self.client._query_json(
                "containers/create", method="POST", data=config, params={"name": name}
            )
        return created

    async def start_process(self, container_id: str) -> None:
        """Start a created container (errors name it as the process it is)."""
        async with translated(f"process {container_id[:12]}"):
            await self.client._query_json(f"containers/{container_id}/start", method="POST")

    async def stop_process(self, container_id: str, grace: int) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the container stays (unlike :meth:`stop`)."""
        async with translated(f"process {container_id[:12]}"):
            await self.client.containers.container(container_id).stop(t=grace)

    async def wait_not_running(self, container_id: str) -> None:
        """Return once the container is not running (answered at its exit: only connecting is limited)."""
        async with translated(f"process {container_id[:12]}"):
            await self.client._query_json(
                f"containers/{container_id}/wait",
                method="POST",
                params={"condition": "not-running"},
                timeout=self.streaming(),
            )

    async def past_events(self, filters: dict[str, list[str]], since: str, until: str) -> list[EngineEvent]:
        """The Engine's events matching ``filters`` between ``since`` and ``until`` (``seconds.nanoseconds``):
        a bounded query, answered in one piece (unlike the live :meth:`events`)."""
        params = {"filters": json.dumps(filters), "since": since, "until": until}
        async with translated("events"), self.client._query("events", params=params) as response:
            body = await response.text()
        return [json.loads(line) for line in body.splitlines() if line.strip()]


def build_output(item: dict[str, Any]) -> str:
    """One line of docker's JSON build stream as the text a terminal would show."""
    if isinstance(item.get("stream"), str):
        return str(item["stream"])
    if isinstance(item.get("status"), str):
        parts = [str(item.get("id") or ""), item["status"], str(item.get("progress") or "")]
        return " ".join(p for p in parts if p).rstrip() + "\n"
    return ""


def _created(network: dict[str, Any]) -> tuple[datetime, int, str]:
    """A network's creation time, to the nanosecond, for ordering (the engine writes it in RFC 3339 with its
    fraction's trailing zeros cut, so the strings do not sort), then its id."""
    match = re.fullmatch(r"(.{19})(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", str(network.get("Created", "")))
    if match is None:
        return datetime.max.replace(tzinfo=UTC), 0, str(network.get("Id", ""))
    base, fraction, zone = match.groups()
    when = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return when, int((fraction or "").ljust(9, "0")), str(network.get("Id", ""))
