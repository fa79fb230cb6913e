"""The API's JSON answers as TypedDicts, in the standard library only: the CLI reads typed answers without
importing pydantic (about 100 ms of every command's start), and the services that answer with a plain dict
build it from the same type.

Each class mirrors, field for field, the model of :mod:`shared.models` of the same name (the JSON the API
renders it as: datetimes are ISO 8601 strings or null, literals are strings); ``tests/test_protocol.py``
checks that they do not drift. Nothing here may import more than ``typing``.
"""

from __future__ import annotations

from typing import TypedDict


class App(TypedDict):
    name: str
    status: str
    release: str
    balancer: str
    failed_release: str
    failure: str


class System(TypedDict):
    name: str
    version: str
    provider: str
    status: str


class ImageStatus(TypedDict):
    image: str
    present: bool | None
    pullable: bool | None


class Process(TypedDict):
    id: str
    app: str
    name: str
    release: str
    command: str
    image: str
    host: str
    ports: list[str]
    cpu: float
    memory: float
    started: str | None
    status: str


class Build(TypedDict):
    id: str
    app: str
    status: str
    description: str
    manifest: str
    release: str
    started: str | None
    ended: str | None
    error: str


class Release(TypedDict):
    id: str
    app: str
    build: str
    env: dict[str, str]
    manifest: str
    description: str
    created: str | None


class Formation(TypedDict):
    name: str
    count: int
    running: int
    memory: int
    ports: list[str]
    balancer: str
    endpoints: list[str]
    certificate: str


class Resource(TypedDict):
    name: str
    type: str
    status: str
    message: str
    url: str
    apps: list[str]


class TimerStatus(TypedDict):
    name: str
    schedule: str
    service: str
    command: str
    last_run: str | None
    last_exit: int | None
    running: str
    next_run: str | None


class AccessToken(TypedDict):
    """``POST /system/access`` (the gateway's own answer, no model of :mod:`shared.models`)."""

    token: str
    role: str
    expires: str
