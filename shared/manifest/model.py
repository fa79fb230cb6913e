"""The typed manifest both formats parse into, stored with each build and release as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.manifest.errors import ManifestError, whole_number
from shared.models import Model
from shared.names import url_key

Protocol = Literal["http", "https", "tcp", "tls"]


class Health(Model):
    path: str = "/"
    interval: int = Field(5, ge=1)
    timeout: int = Field(4, ge=1)
    grace: int = Field(5, ge=0)

    _whole = field_validator("interval", "timeout", "grace", mode="before")(whole_number)


class Scale(Model):
    count: int = Field(1, ge=0, description="How many run; the lower bound of a range (this rack does not autoscale).")
    count_max: int | None = Field(None, ge=0, description='The upper bound of a range like "1-3".')
    memory: int = Field(256, ge=4, description="MB")
    cpu: int = Field(256, ge=0, description="CPU units (1024 = one core)")

    _whole = field_validator("count", "memory", "cpu", mode="before")(whole_number)


class BuildSpec(Model):
    path: str = "."
    manifest: str = Field("Dockerfile", description="The Dockerfile, relative to path.")
    args: dict[str, str] = Field(default_factory=dict)
    required_args: list[str] = Field(
        default_factory=list, description="Bare build args (``TEST2``): their value comes from the app's environment."
    )


class PortMapping(Model):
    """One port a process type listens on, and how the rack exposes it."""

    container: int = Field(ge=1, le=65535)
    balancer: int | None = Field(
        None, ge=1, le=65535, description="The balancer port asked for (80 of 80:3000); None: the rack picks."
    )
    public: bool = Field(True, description="False: reachable on the rack network only, no balancer listener.")
    protocol: Protocol = Field("tcp", description="What the balancer speaks to clients; https and tls terminate TLS.")

    @property
    def tls(self) -> bool:
        return self.protocol in ("https", "tls")

    def __str__(self) -> str:
        return f"{self.balancer}:{self.container}" if self.public and self.balancer else str(self.container)


class Volume(Model):
    """A named volume per app and process type, mounted at ``path``, kept across releases."""

    name: str = Field(description="The volume's name in the manifest; derived from the path when not given.")
    path: str


class Deployment(Model):
    minimum: int = Field(50, ge=0, le=100, description="Percent of the count kept running during a roll-out.")
    maximum: int = Field(200, ge=100, description="Percent of the count that may run during a roll-out.")

    _whole = field_validator("minimum", "maximum", mode="before")(whole_number)


class Service(Model):
    name: str
    build: BuildSpec | None = Field(None, description="None when the service runs a prebuilt image.")
    image: str = ""
    command: str | list[str] | None = None
    environment: list[str] = Field(default_factory=list, description="KEY=default, or KEY when required.")
    port: int | None = Field(None, ge=1, le=65535, description="The main container port ($PORT).")
    internal: bool = Field(False, description="Reachable from the rack's containers only: no balancer.")
    ports: list[PortMapping] = Field(default_factory=list, description="Every port; the main one first.")
    health: Health | None = None
    scale: Scale = Field(default_factory=Scale)
    resources: list[str] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list, description="Process types of the same app this one reaches.")
    volumes: list[Volume] = Field(default_factory=list)
    deployment: Deployment = Field(default_factory=Deployment)
    termination_grace: int = Field(30, ge=0, description="Seconds between SIGTERM and SIGKILL.")
    drain: int = Field(30, ge=0, description="Seconds the balancer lets open connections finish.")
    singleton: bool = Field(False, description="Never two at once, not even during a roll-out.")

    _whole = field_validator("port", "termination_grace", "drain", mode="before")(whole_number)

    @model_validator(mode="after")
    def _main_port_listed(self) -> Service:
        if self.port is not None and not any(mapping.container == self.port for mapping in self.ports):
            self.ports.insert(0, PortMapping(container=self.port, public=not self.internal, protocol="http"))
        return self

    @property
    def public(self) -> bool:
        """Only a service with a public port gets a balancer."""
        return any(mapping.public for mapping in self.ports)

    @property
    def public_ports(self) -> list[PortMapping]:
        return [mapping for mapping in self.ports if mapping.public]


class ResourceSpec(Model):
    type: str
    options: dict[str, str] = Field(default_factory=dict)


class Timer(Model):
    """A command run as a one-off of ``service``'s current release on a 5-field cron schedule (UTC)."""

    name: str
    schedule: str
    command: str
    service: str


class Manifest(Model):
    environment: list[str] = Field(default_factory=list)
    resources: dict[str, ResourceSpec] = Field(default_factory=dict)
    services: dict[str, Service] = Field(default_factory=dict)
    timers: dict[str, Timer] = Field(default_factory=dict)
    warnings: list[str] = Field(
        default_factory=list, description="Keys this rack does not act on, one line each (the file still deploys)."
    )
    source: str = Field("", description="The manifest's text when it uses ${VAR}: filled again at each release.")
    filename: str = ""

    def service(self, name: str) -> Service:
        """The service called ``name``; a ManifestError when there is none."""
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(self.services) or "none"
            raise ManifestError(f"no service named {name} in the manifest (services: {known})") from None

    def service_environment(self, service_name: str, app_env: Mapping[str, str], app: str = "") -> dict[str, str]:
        """The environment a process of ``service_name`` runs with.

        Defaults declared at the top level, then the service's own (which win over the top level's), then the
        links to other process types (``REDIS_URL``, ... when ``app`` is given), then the app's environment
        (``convox env set``), which wins over all, but for the URL of a resource of the manifest
        (``DATABASE_URL``), which only the services that list the resource get. ``*`` passes the whole app
        environment (as every process gets it here). A key declared without a default anywhere is required: a
        ManifestError lists the required keys the app's environment lacks.
        """
        service = self.service(service_name)
        merged: dict[str, str] = {}
        required: list[str] = []
        for entry in (*self.environment, *service.environment):
            key, sep, default = entry.partition("=")
            if key == "*" and not sep:
                continue
            if sep:
                merged[key] = default
            elif key not in required:
                required.append(key)
        missing = [key for key in required if key not in merged and key not in app_env]
        if missing:
            raise ManifestError(
                f"service {service_name} requires environment the app does not set: {', '.join(missing)} "
                f"(set with: convox env set {' '.join(key + '=...' for key in missing)})"
            )
        if app:
            for link in service.links:
                merged.update(self.link_environment(link, app, app_env))
        merged.update(app_env)
        for resource in self.resources:  # a resource's URL goes to the services that list it
            if resource not in service.resources:
                merged.pop(url_key(resource), None)
        return merged

    def link_environment(self, link: str, app: str, app_env: Mapping[str, str]) -> dict[str, str]:
        """``REDIS_URL``, ``REDIS_HOST``, ``REDIS_PORT``, ... for a link to process type ``link``: its name on the
        rack network (``redis.myapp``) and main port; scheme, user, password and path from the linked type's
        ``LINK_*`` environment as Convox gen1 does (the scheme defaults to the image's kind, else tcp)."""
        target = self.service(link)
        defaults = {key: value for key, _, value in (entry.partition("=") for entry in target.environment)}
        defaults.update({key: value for key, value in app_env.items() if key.startswith("LINK_")})
        host = f"{link}.{app}"
        port = target.port if target.port is not None else (target.ports[0].container if target.ports else None)
        scheme = defaults.get("LINK_SCHEME") or _scheme_of(target.image or link)
        username = defaults.get("LINK_USERNAME", "")
        password = defaults.get("LINK_PASSWORD", "")
        path = defaults.get("LINK_PATH", "")
        auth = f"{username}:{password}@" if username or password else ""
        prefix = link.upper().replace("-", "_")
        where = f"{host}:{port}" if port is not None else host
        out = {
            f"{prefix}_URL": f"{scheme}://{auth}{where}{path}",
            f"{prefix}_HOST": host,
            f"{prefix}_SCHEME": scheme,
        }
        if port is not None:
            out[f"{prefix}_PORT"] = str(port)
        if username:
            out[f"{prefix}_USERNAME"] = username
        if password:
            out[f"{prefix}_PASSWORD"] = password
        if path:
            out[f"{prefix}_PATH"] = path
        return out


_SCHEMES = {"redis": "redis", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql", "memcached": "memcached"}


def _scheme_of(image: str) -> str:
    base = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    for kind, scheme in _SCHEMES.items():
        if kind in base:
            return scheme
    return "tcp"
