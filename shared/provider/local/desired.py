"""What each process type of a release should run on the local provider: the manifest's scale, the saved
formation overrides on top, and a change being tried (the roll-out, :mod:`shared.provider.local.formation`,
makes it so)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import BadRequest
from shared.manifest import Health, Manifest, Volume, resolve_manifest
from shared.models import FormationUpdate, Release
from shared.provider.local.images import image_name

DRAIN_SECONDS = 30.0
"""How long a retired process keeps serving the connections its balancer opened to it before it stops."""


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
    minimum: int = 50
    """Percent of the count that serves throughout a roll-out (``deployment.minimum``; 0 for a singleton)."""
    maximum: int = 200
    """Percent of the count that may run at once during a roll-out (``deployment.maximum``; 100 for a
    singleton: its old process stops before the new one starts)."""


def manifest_of(release: Release) -> Manifest:
    if not release.manifest:
        raise BadRequest(f"release {release.id} has no build to run")
    return resolve_manifest(Manifest.model_validate_json(release.manifest), release.env)


def desired_processes(
    release: Release, rack: str, overrides: dict[str, dict[str, Any]], patch: dict[str, FormationUpdate] | None = None
) -> list[Desired]:
    """What each process type of ``release`` should run: the manifest's scale, the saved overrides on
    top, then ``patch`` (a change being tried, saved only once it runs)."""
    manifest = manifest_of(release)
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
            image = image_name(rack, release.app, name, release.build)
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
                minimum=0 if service.singleton else service.deployment.minimum,
                maximum=100 if service.singleton else service.deployment.maximum,
            )
        )
    return wanted
