"""Processes on the local provider: containers labelled with the rack and the app."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Any

from shared.errors import BadRequest, NotFound
from shared.models import Process, ProcessRunOptions
from shared.provider.local.apps import LocalApps
from shared.provider.local.docker import LABEL_APP, LABEL_ONEOFF, LABEL_RACK, LABEL_RELEASE, LABEL_TYPE, Docker


def _started(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value).astimezone()
    if isinstance(value, str) and value and not value.startswith("0001"):
        return datetime.fromisoformat(value)
    return None


def _ports(raw: Any) -> list[str]:
    ports: list[str] = []
    if isinstance(raw, list):  # containers/json
        for port in raw:
            if port.get("PublicPort"):
                ports.append(f"{port['PublicPort']}:{port['PrivatePort']}")
    elif isinstance(raw, dict):  # containers/{id}/json NetworkSettings.Ports
        for key, bindings in raw.items():
            private = key.split("/")[0]
            for binding in bindings or []:
                ports.append(f"{binding.get('HostPort')}:{private}")
    return sorted(set(ports))


def to_process(container: dict[str, Any]) -> Process:
    """A Process from either docker's list entry or its inspect document."""
    config = container.get("Config") or {}
    labels = container.get("Labels") or config.get("Labels") or {}
    if "Command" in container:
        command = container["Command"]
    else:
        command = shlex.join([*((container.get("Path") and [container["Path"]]) or []), *container.get("Args", [])])
    state = container.get("State")
    status = state.get("Status", "running") if isinstance(state, dict) else (state or "running")
    started = _started(state.get("StartedAt") if isinstance(state, dict) else container.get("Created"))
    network = container.get("NetworkSettings") or {}
    ports = _ports(container.get("Ports") if "Ports" in container else network.get("Ports"))
    return Process(
        id=container["Id"][:12],
        app=labels.get(LABEL_APP, ""),
        name=labels.get(LABEL_TYPE, ""),
        release=labels.get(LABEL_RELEASE, ""),
        command=command,
        image=container.get("Image", "") if "Command" in container else config.get("Image", ""),
        host="127.0.0.1",
        ports=ports,
        started=started,
        status=status,
    )


class LocalProcesses:
    def __init__(self, docker: Docker, apps: LocalApps, rack: str) -> None:
        self.docker = docker
        self.apps = apps
        self.rack = rack

    def _labels(self, app: str) -> dict[str, str]:
        return {LABEL_RACK: self.rack, LABEL_APP: app}

    async def run(self, app: str, options: ProcessRunOptions) -> Process:
        await self.apps.get(app)
        if not options.image:
            raise BadRequest("no image to run: the app has no release yet")
        labels = {**options.labels, **self._labels(app), LABEL_TYPE: options.service, LABEL_ONEOFF: "true"}
        if options.release:
            labels[LABEL_RELEASE] = options.release
        config: dict[str, Any] = {
            "Image": options.image,
            "Env": [f"{key}={value}" for key, value in options.environment.items()],
            "Labels": labels,
            "HostConfig": {"Memory": options.memory * 1024 * 1024, "Init": True},
        }
        if options.command:
            config["Cmd"] = options.command
        return to_process(await self.docker.run(config))

    async def list(self, app: str) -> list[Process]:
        await self.apps.get(app)
        containers = await self.docker.containers(self._labels(app))
        return sorted((to_process(c) for c in containers), key=lambda p: (p.name, p.id))

    async def get(self, app: str, pid: str) -> Process:
        await self.apps.get(app)
        if not pid or not pid.isalnum():
            raise NotFound(f"no such process: {pid}")
        try:
            container = await self.docker.inspect(pid)
        except NotFound:
            raise NotFound(f"no such process: {pid}") from None
        labels = (container.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_RACK) != self.rack or labels.get(LABEL_APP) != app:
            raise NotFound(f"no such process: {pid}")
        return to_process(container)

    async def stop(self, app: str, pid: str) -> None:
        process = await self.get(app, pid)
        await self.docker.remove(process.id)
