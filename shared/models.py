"""Pydantic models that cross every boundary: API bodies, provider results, CLI rendering."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from shared.names import APP_NAME_PATTERN, is_app_name

__all__ = ["APP_NAME_PATTERN"]
RACK_APP = "convox"
"""The name under which the rack shows itself (`convox ps --app convox`); never a user's app."""


def invalid_app_name(name: str) -> str:
    """The message for a name that is not an app name."""
    return (
        f"invalid app name: {name!r} (lowercase letters, digits and dashes, starting with a letter, "
        "at most 30 characters)"
    )


def _check_app_name(name: str) -> str:
    if not is_app_name(name):
        raise ValueError(invalid_app_name(name))
    return name


AppName = Annotated[
    str,
    AfterValidator(_check_app_name),
    WithJsonSchema({"type": "string", "pattern": APP_NAME_PATTERN, "maxLength": 30}),
]
AppStatus = Literal["created", "creating", "running", "updating", "deleting", "rollback", "failed"]
"""``created``: no release has served yet; ``running``: a release serves (also after a later roll-out failed,
see ``App.failed_release``); ``failed``: the first roll-out failed and nothing serves."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(Model):
    """Every error the API returns."""

    error: str = Field(examples=["no such app: myapp"])


class App(Model):
    name: str = Field(examples=["myapp"])
    status: AppStatus = Field(examples=["running"])
    release: str = Field("", description="The active release id, empty before the first release.")
    balancer: str = Field(
        "", description="Where the app's public process type answers, if it has one (https://host:port for TLS)."
    )
    failed_release: str = Field(
        "", description="The release whose latest roll-out failed or was cancelled (`release` still serves)."
    )
    failure: str = Field("", description="Why that roll-out did not finish.")


class AppCreate(Model):
    name: AppName = Field(
        description="Lowercase letters, digits and dashes, starting with a letter, at most 30 characters.",
        examples=["myapp"],
    )


class System(Model):
    name: str = Field(examples=["convox"])
    version: str = Field(examples=["0.1.0"])
    provider: str = Field(examples=["local"])
    status: str = Field(examples=["running"])


class ImageStatus(Model):
    """Whether the rack's builds can start ``FROM`` an image (``GET /system/images``; `convox init` asks)."""

    image: str = Field(examples=["python:3.12-slim"])
    present: bool | None = Field(
        examples=[False], description="The engine that builds has the image (null: this provider cannot tell)."
    )
    pullable: bool | None = Field(
        examples=[False],
        description="A registry answered, within a few seconds, that it has the image (null: not asked, since "
        "the engine has it, or this provider cannot tell).",
    )


class Process(Model):
    """A running container of an app, as `convox ps` shows it. cpu and memory are fractions."""

    id: str
    app: str
    name: str
    release: str = ""
    command: str = ""
    image: str = ""
    host: str = ""
    ports: list[str] = Field(default_factory=list)
    cpu: float = 0.0
    memory: float = 0.0
    started: datetime | None = None
    status: str = "running"


class ProcessRunOptions(Model):
    """What a new process of an app runs: a process type's image with a command and environment."""

    service: str = Field(description="The process type, as named in the manifest.")
    command: list[str] = Field(default_factory=list)
    image: str = ""
    release: str = ""
    environment: dict[str, str] = Field(default_factory=dict)
    memory: int = Field(0, ge=0, description="Memory limit in MB, 0 for none.")
    timer: str = Field("", description="The timer this run is for (its runs are found by it); empty for others.")


BuildStatus = Literal["created", "running", "complete", "failed"]


class Build(Model):
    id: str = Field(examples=["BAPRZPQKXNE"], description="B + 10 capital letters.")
    app: str
    status: BuildStatus
    description: str = ""
    manifest: str = Field("", description="The manifest as JSON (shared.manifest.Manifest).")
    release: str = Field("", description="The release this build made, once complete.")
    started: datetime | None = None
    ended: datetime | None = None
    error: str = ""


class StoredObject(Model):
    """An object the provider keeps for an app (a build's source): see ``ObjectsAPI``."""

    app: str = Field(examples=["myapp"])
    key: str = Field(examples=["sources/9f3c2a4b1d0e7a65.tgz"])
    size: int = Field(ge=0, description="Bytes.")
    url: str = Field(
        examples=["s3://convox-settings/apps/myapp/objects/sources/9f3c2a4b1d0e7a65.tgz"],
        description="Where the provider keeps it: object://APP/KEY locally, s3://BUCKET/KEY on aws.",
    )


class Release(Model):
    id: str = Field(examples=["RNJYVQUMKKU"], description="R + 10 capital letters.")
    app: str
    build: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    manifest: str = Field("", description="The manifest as JSON (shared.manifest.Manifest).")
    description: str = ""
    created: datetime | None = None


def _check_images(images: dict[str, str]) -> dict[str, str]:
    from shared.names import is_image

    for name, image in images.items():
        if not is_app_name(name):
            raise ValueError(f"invalid process type name: {name!r}")
        if not is_image(image):
            raise ValueError(f"invalid image reference for {name}: {image!r}")
    return images


class BuildReport(Model):
    """What a builder that runs outside the rack (the aws provider's ECS task) reports at its end: the image it
    pushed per built process type, or why it failed."""

    images: Annotated[dict[str, str], AfterValidator(_check_images)] = Field(
        default_factory=dict,
        max_length=100,
        examples=[{"web": "123456789012.dkr.ecr.us-east-1.amazonaws.com/convox/shop:web.bapr"}],
        description="Process type -> the image pushed for it.",
    )
    error: str = Field("", max_length=4000, description="Why the build failed (then no image is used).")


class BuildOptions(Model):
    description: str = ""
    manifest: str = Field("", description="The manifest's path in the source; convox.yml by default.")
    no_cache: bool = False


class Formation(Model):
    """A process type of the active release: how many run, with what memory, where its balancer answers."""

    name: str
    count: int
    running: int = 0
    memory: int = 0
    ports: list[str] = Field(default_factory=list)
    balancer: str = Field(
        "",
        description="host:port a client connects to, for a type with a public port (https://host:port, or "
        "tls://host:port, where the balancer terminates TLS).",
    )
    endpoints: list[str] = Field(
        default_factory=list, description="Every balancer listener of the type, the main one first, as balancer."
    )
    certificate: str = Field(
        "",
        examples=["3F:A0:...:9C"],
        description="The SHA-256 fingerprint of the certificate its https/tls listeners serve (the app's own).",
    )


class FormationUpdate(Model):
    count: int | None = Field(None, ge=0, le=100)
    memory: int | None = Field(None, ge=6, le=1_048_576, description="MB (the Engine's least is 6)")


ResourceType = Literal["postgres", "mysql", "mariadb", "redis", "memcached"]


class ResourceEnv(Model):
    """What a manifest's resources change in the environment of the release a build makes."""

    set: dict[str, str] = Field(default_factory=dict, description="``DATABASE_URL`` and the like, to set.")
    unset: list[str] = Field(default_factory=list, description="Those of resources the manifest dropped.")


class Resource(Model):
    """A backing service (postgres, mysql, mariadb, redis, memcached) and the apps it is linked to."""

    name: str = Field(examples=["postgres"])
    type: ResourceType
    status: str = Field(
        examples=["running"],
        description="creating until the server accepts connections, then running (stopped or restarting when "
        "its server is not up), deleting while it goes; failed when it could not be made (see message: it holds "
        "nothing, and a create of the same name tries again).",
    )
    message: str = Field("", description="Why a failed service could not be made.")
    url: str = Field(
        "",
        examples=["postgres://app:***@postgres:5432/app"],
        description="Where apps reach it; the password is *** unless asked to reveal it.",
    )
    apps: list[str] = Field(default_factory=list, description="The apps linked to it, by name.")


class LogEntry(Model):
    """One line of an app's log: `TIMESTAMP SERVICE:RELEASE/PID LINE`."""

    timestamp: datetime
    service: str
    release: str = ""
    pid: str = ""
    line: str


class TimerStatus(Model):
    """A timer of the app's active release: its schedule, and how its runs went."""

    name: str
    schedule: str = Field(examples=["*/5 * * * *"], description="5-field cron, UTC.")
    service: str
    command: str
    last_run: datetime | None = None
    last_exit: int | None = Field(None, description="The last run's exit code; none while it runs or before any.")
    running: str = Field("", description="The pid of the run in progress.")
    next_run: datetime | None = None
