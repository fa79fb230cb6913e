"""The app manifest: `convox.yml` (Convox generation 2), or a 2015 `docker-compose.yml` when there is none.

Both are parsed into the same typed :class:`Manifest`; an error names the file, the key and what is wrong
(``convox.yml: services.web.scale.count: must be a whole number``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.errors import BadRequest
from shared.models import Model

MANIFEST_FILES = ("convox.yml", "docker-compose.yml")


class ManifestError(BadRequest):
    """A manifest that cannot be used; the message names the file and the key."""


class Health(Model):
    path: str = "/"
    interval: int = Field(5, ge=1)
    timeout: int = Field(4, ge=1)
    grace: int = Field(5, ge=0)


class Scale(Model):
    count: int = Field(1, ge=0)
    memory: int = Field(256, ge=4, description="MB")
    cpu: int = Field(256, ge=0, description="CPU units (1024 = one core)")


class BuildSpec(Model):
    path: str = "."
    manifest: str = Field("Dockerfile", description="The Dockerfile, relative to path.")
    args: dict[str, str] = Field(default_factory=dict)


class Service(Model):
    name: str
    build: BuildSpec | None = Field(None, description="None when the service runs a prebuilt image.")
    image: str = ""
    command: str | list[str] | None = None
    environment: list[str] = Field(default_factory=list, description="KEY=default, or KEY when required.")
    port: int | None = Field(None, ge=1, le=65535, description="The container port the service listens on.")
    internal: bool = Field(False, description="Reachable from the rack's containers only: no balancer.")
    health: Health | None = None
    scale: Scale = Field(default_factory=Scale)
    resources: list[str] = Field(default_factory=list)

    @property
    def public(self) -> bool:
        """Only a service with a public port gets a balancer."""
        return self.port is not None and not self.internal


class ResourceSpec(Model):
    type: str
    options: dict[str, str] = Field(default_factory=dict)


class Manifest(Model):
    environment: list[str] = Field(default_factory=list)
    resources: dict[str, ResourceSpec] = Field(default_factory=dict)
    services: dict[str, Service] = Field(default_factory=dict)


def parse_manifest(text: str, filename: str) -> Manifest:
    """Parse ``text`` as the manifest named ``filename`` (convox.yml, or docker-compose.yml by its name)."""
    raise NotImplementedError  # being written: see issue #3


def find_manifest(directory: Path, name: str | None = None) -> Path:
    """``name`` if given (relative to ``directory``), else convox.yml, else docker-compose.yml."""
    raise NotImplementedError  # being written: see issue #3
