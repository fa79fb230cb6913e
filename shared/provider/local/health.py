"""Health checks of new processes during a roll-out on the local provider: an HTTP GET on the manifest's
``health`` path, else a TCP connect to the process's port; a type without a port needs only to keep running.
A process that fails is reported in the app's events."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from shared.errors import RackError
from shared.manifest import Health
from shared.provider.local.docker import LABEL_APP, LABEL_RELEASE, ContainerInfo, ContainerSummary, Docker
from shared.provider.local.events import Events


def container_ip(container: ContainerSummary | ContainerInfo, network: str) -> str:
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    return str((networks.get(network) or {}).get("IPAddress") or "")


class HealthChecks:
    def __init__(self, docker: Docker, network: str, events: Events) -> None:
        self.docker = docker
        self.network = network
        self.events = events

    async def wait(self, container: ContainerInfo, service: str, port: int | None, health: Health | None) -> None:
        """Wait until a new container passes its health check: HTTP GET on ``health`` when the manifest gives
        one, else a TCP connect to its port; a type without a port needs only to keep running."""
        checked = health or Health()
        deadline = asyncio.get_running_loop().time() + checked.grace + 3 * checked.timeout + 2
        first = True
        restarts: int | None = None
        began = time.time() - 1.0  # its exits are looked up from here (a second early: clocks' rounding)
        pause = 0.05  # a fresh process usually answers within a few tenths of a second: look soon, then back off
        while True:
            info = await self.docker.inspect(container["Id"])
            state = info.get("State") or {}
            if not state.get("Running") or state.get("Restarting"):
                code = state.get("ExitCode")
                await self.event(container, f"{service} failed its health check (exited with code {code})")
                raise RackError(f"{service} exited with code {code} before it was healthy")
            count = int(info.get("RestartCount") or 0)
            if restarts is None:
                restarts = count
            elif count != restarts:  # it exited and its restart policy started it again between two looks
                code = await self.last_exit(container["Id"], began)
                exited = "exited" if code is None else f"exited with code {code}"
                await self.event(container, f"{service} failed its health check ({exited}, restarted by the engine)")
                raise RackError(f"{service} {exited} before it was healthy (restarted by the engine)")
            if port is None:
                if not first:  # a type without a port: still running after its first look
                    return
                pause = 1.0
            elif await self.check(container_ip(info, self.network), port, health):
                return
            first = False
            if asyncio.get_running_loop().time() > deadline:
                what = f"GET {health.path}" if health else f"TCP {port}"
                await self.event(container, f"{service} failed its health check ({what})")
                raise RackError(f"{service} failed its health check ({what})")
            await asyncio.sleep(pause)
            pause = min(pause * 2, float(checked.interval), 1.0)

    async def last_exit(self, container_id: str, since: float) -> int | None:
        """The exit code of the container's latest run that ended since ``since`` (its restart policy started
        it again, and its state no longer says); ``None`` when the engine does not say."""
        try:
            codes = await self.docker.exit_codes(container_id, since)
        except RackError:
            return None
        return codes[-1] if codes else None

    async def event(self, container: ContainerInfo, message: str) -> None:
        labels = (container.get("Config") or {}).get("Labels") or {}
        app, release = labels.get(LABEL_APP, ""), labels.get(LABEL_RELEASE, "")
        await self.events.emit(app, message, release=release, pid=container["Id"])

    @staticmethod
    async def check(ip: str, port: int, health: Health | None) -> bool:
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
        try:  # plain HTTP to the container: no TLS, so no CA bundle to load (23 ms of the loop's CPU per look)
            async with httpx.AsyncClient(timeout=health.timeout, verify=False) as client:
                response = await client.get(f"http://{ip}:{port}{health.path}")
        except httpx.HTTPError:
            return False
        return response.status_code < 400
