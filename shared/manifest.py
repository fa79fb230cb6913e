"""The app manifest: `convox.yml` (Convox generation 2), or a 2015 `docker-compose.yml` when there is none.

Both are parsed into the same typed :class:`Manifest`; an error names the file, the key and what is wrong
(``convox.yml: services.web.scale.count: must be a whole number, got "many"``).

The API others call:

- :func:`find_manifest` picks the manifest file in an extracted source tree;
- :func:`parse_manifest` turns its text into a :class:`Manifest` (choosing the format by the file's name);
- :meth:`Manifest.service_environment` gives one service's environment for a release.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from shared.errors import BadRequest
from shared.models import Model

MANIFEST_FILES = ("convox.yml", "docker-compose.yml")
SERVICE_NAME_PATTERN = r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$"
"""Service and resource names become DNS labels (``web.myapp``)."""
SERVICE_NAME_RE = re.compile(SERVICE_NAME_PATTERN)
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESOURCE_TYPES = ("mysql", "postgres", "redis")
MAX_MANIFEST_CHARS = 1_000_000


class ManifestError(BadRequest):
    """A manifest that cannot be used; the message names the file and the key."""


def _whole_number(value: Any) -> Any:
    """YAML's ``true`` is not a count (pydantic would take it as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, got {_describe(value)}")
    return value


class Health(Model):
    path: str = "/"
    interval: int = Field(5, ge=1)
    timeout: int = Field(4, ge=1)
    grace: int = Field(5, ge=0)

    _whole = field_validator("interval", "timeout", "grace", mode="before")(_whole_number)


class Scale(Model):
    count: int = Field(1, ge=0)
    memory: int = Field(256, ge=4, description="MB")
    cpu: int = Field(256, ge=0, description="CPU units (1024 = one core)")

    _whole = field_validator("count", "memory", "cpu", mode="before")(_whole_number)


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

    _whole = field_validator("port", mode="before")(_whole_number)

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

    def service(self, name: str) -> Service:
        """The service called ``name``; a ManifestError when there is none."""
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(self.services) or "none"
            raise ManifestError(f"no service named {name} in the manifest (services: {known})") from None

    def service_environment(self, service_name: str, app_env: Mapping[str, str]) -> dict[str, str]:
        """The environment a process of ``service_name`` runs with.

        Defaults declared at the top level, then the service's own (which win over the top level's), then the
        app's environment (``convox env set``), which wins over both. A key declared without a default anywhere
        is required: a ManifestError lists the required keys the app's environment lacks.
        """
        service = self.service(service_name)
        merged: dict[str, str] = {}
        required: list[str] = []
        for entry in (*self.environment, *service.environment):
            key, sep, default = entry.partition("=")
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
        merged.update(app_env)
        return merged


# -- finding the manifest ---------------------------------------------------------------------------------------


def find_manifest(directory: Path, name: str | None = None) -> Path:
    """``name`` if given (relative to ``directory``), else convox.yml, else docker-compose.yml.

    The path returned keeps the name it was found by (its basename chooses the format); it never leads out
    of ``directory``, symbolic links included.
    """
    root = directory.resolve()
    if name:
        candidate = directory / name
        if not _inside(candidate, root):
            raise ManifestError(f"manifest {name}: must be a file inside the source")
        if not candidate.is_file():
            raise ManifestError(f"no manifest named {name} in the source")
        return candidate
    for filename in MANIFEST_FILES:
        candidate = directory / filename
        if candidate.is_file():
            if not _inside(candidate, root):
                raise ManifestError(f"{filename}: must be a file inside the source")
            return candidate
    raise ManifestError("no convox.yml or docker-compose.yml in the source")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


# -- parsing ----------------------------------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]


def parse_manifest(text: str, filename: str) -> Manifest:
    """Parse ``text`` as the manifest named ``filename`` (convox.yml, or docker-compose.yml by its name).

    Files named ``docker-compose*.yml`` (or ``.yaml``) are read as docker-compose; any other name as convox.yml.
    Every problem found is reported in one ManifestError: ``FILE: KEY.PATH: what is wrong; KEY.PATH: ...``.
    """
    import yaml  # only the code that parses pays for it (the CLI starts without it)

    if len(text) > MAX_MANIFEST_CHARS:
        raise ManifestError(f"{filename}: too large ({len(text)} characters, at most {MAX_MANIFEST_CHARS})")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{filename}: {_yaml_problem(exc)}") from None
    problems = _Problems(filename)
    if is_compose_file(filename):
        manifest = _ComposeParser(problems).parse(document)
    else:
        manifest = _ConvoxParser(problems).parse(document)
    problems.raise_if_any()
    assert manifest is not None  # no problems means a manifest was made
    return manifest


def is_compose_file(filename: str) -> bool:
    """Whether ``filename`` names a docker-compose file (``docker-compose*.yml`` or ``.yaml``)."""
    base = posixpath.basename(filename.replace("\\", "/"))
    return fnmatch.fnmatchcase(base, "docker-compose*.yml") or fnmatch.fnmatchcase(base, "docker-compose*.yaml")


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "not valid YAML"
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
    return f"invalid YAML: {problem}"


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _describe(value: Any) -> str:
    """A value as an error message shows it: strings quoted, maps and lists by their kind."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)


def _text(value: Any) -> str:
    """A YAML scalar as the string a program sees in its environment (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple)


class _Problems:
    """Collects every problem of a manifest, so one error lists them all."""

    LIMIT = 20

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.items: list[str] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.items.append(f"{_format_path(path)}: {message}" if path else message)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[: self.LIMIT]
        more = len(self.items) - len(shown)
        raise ManifestError(f"{self.filename}: " + "; ".join(shown) + (f"; and {more} more" if more else ""))

    def validation(self, exc: ValidationError, path: KeyPath, aliases: Mapping[KeyPath, KeyPath]) -> None:
        """Translate pydantic's errors into ``key.path: what is wrong``, in the user's own key names."""
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            where = path + loc
            for length in range(len(loc), 0, -1):
                if loc[:length] in aliases:
                    where = aliases[loc[:length]] + loc[length:]
                    break
            self.add(where, _validation_message(error))


def _validation_message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _describe(error.get("input"))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("int_parsing", "int_type", "int_from_float", "int_parsing_size"):
        return f"must be a whole number, got {got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {
            "greater_than_equal": ("at least", "ge"),
            "greater_than": ("more than", "gt"),
            "less_than_equal": ("at most", "le"),
            "less_than": ("less than", "lt"),
        }[kind]
        return f"must be {words[0]} {ctx.get(words[1])}, got {got}"
    if kind == "string_type":
        return f"must be a string, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a map, got {got}"
    if kind == "list_type":
        return f"must be a list, got {got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return f"is not valid, got {got}"


class _Parser:
    """What both formats share: reading maps, environment lists, commands, names."""

    def __init__(self, problems: _Problems) -> None:
        self.problems = problems

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.add(path, message)

    def mapping(self, value: Any, path: KeyPath, what: str = "a map") -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, f"must be {what}, got {_describe(value)}")
            return None
        return {_text(key): item for key, item in value.items()}

    def check_keys(
        self, data: dict[str, Any], path: KeyPath, allowed: Iterable[str], unsupported: Iterable[str] = ()
    ) -> None:
        """Report (and drop) every key of ``data`` that is not ``allowed``."""
        allowed = list(allowed)
        unsupported = set(unsupported)
        for key in [key for key in data if key not in allowed]:
            del data[key]
            if key in unsupported:
                self.error((*path, key), "not supported by this rack")
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            self.error((*path, key), "unknown key" + (f' (did you mean "{close[0]}"?)' if close else ""))

    def name(self, name: str, path: KeyPath, kind: str) -> bool:
        if SERVICE_NAME_RE.fullmatch(name):
            return True
        self.error(
            path,
            f"invalid {kind} name {_describe(name)}: lowercase letters, digits and dashes, starting with a "
            "letter, at most 63 characters, not ending with a dash",
        )
        return False

    def environment(self, value: Any, path: KeyPath) -> list[str]:
        """A list of ``KEY`` / ``KEY=default``, or a map (a null value means required), as the list form."""
        if value is None:
            return []
        entries: list[tuple[KeyPath, Any]] = []
        if isinstance(value, Mapping):
            entries = [((*path, _text(key)), (key, item)) for key, item in value.items()]
        elif isinstance(value, list):
            entries = [((*path, index), item) for index, item in enumerate(value)]
        else:
            self.error(path, f"must be a list of KEY or KEY=default, got {_describe(value)}")
            return []
        seen: set[str] = set()
        out: list[str] = []
        for where, entry in entries:
            if isinstance(entry, tuple):  # from a map: KEY: default (null: required)
                key, default = _text(entry[0]), entry[1]
                if not _is_scalar(default):
                    self.error(where, f"must be a single value, got {_describe(default)}")
                    continue
                text = None if default is None else _text(default)
            elif isinstance(entry, str):
                key, sep, text_ = entry.partition("=")
                text = text_ if sep else None
            else:
                hint = ""
                if isinstance(entry, Mapping) and len(entry) == 1:
                    ((name, default),) = entry.items()
                    hint = f" (write {name}={_text(default)})"
                self.error(where, f"must be KEY or KEY=default, got {_describe(entry)}{hint}")
                continue
            if not ENV_KEY_RE.fullmatch(key):
                self.error(
                    where,
                    f"invalid variable name {_describe(key)}: letters, digits and underscores, "
                    "not starting with a digit",
                )
            elif key in seen:
                self.error(where, f"{key} is declared twice")
            else:
                seen.add(key)
                out.append(key if text is None else f"{key}={text}")
        return out

    def string_map(self, value: Any, path: KeyPath) -> dict[str, str]:
        """A map of strings, or a list of ``KEY=VALUE`` (build args, labels, resource options)."""
        if value is None:
            return {}
        out: dict[str, str] = {}
        if isinstance(value, list):
            for index, item in enumerate(value):
                key, sep, text = item.partition("=") if isinstance(item, str) else ("", "", "")
                if not sep or not key:
                    self.error((*path, index), f"must be KEY=VALUE, got {_describe(item)}")
                    continue
                out[key] = text
            return out
        data = self.mapping(value, path, "a map of strings")
        for key, item in (data or {}).items():
            if not _is_scalar(item):
                self.error((*path, key), f"must be a single value, got {_describe(item)}")
                continue
            out[key] = _text(item)
        return out

    def command(self, value: Any, path: KeyPath) -> str | list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value.strip() or None
        if isinstance(value, list):
            words: list[str] = []
            for index, word in enumerate(value):
                if word is None or not _is_scalar(word):
                    self.error((*path, index), f"must be a string, got {_describe(word)}")
                    continue
                words.append(_text(word))
            return words or None
        self.error(path, f"must be a string or a list of strings, got {_describe(value)}")
        return None

    def source_path(self, value: Any, path: KeyPath, base: Any = ".") -> bool:
        """A path (build context, Dockerfile) must stay inside the uploaded source: False when it does not."""
        if not isinstance(value, str) or not isinstance(base, str):
            return False  # the model reports the wrong type
        joined = posixpath.normpath(posixpath.join(base, value))
        if posixpath.isabs(value) or joined == ".." or joined.startswith("../"):
            self.error(path, f"must be a path inside the source, got {_describe(value)}")
            return False
        return True

    def health_path(self, value: Any, path: KeyPath) -> None:
        if isinstance(value, str) and not value.startswith("/"):
            self.error(path, f"must start with /, got {_describe(value)}")

    def validate_service(
        self, data: dict[str, Any], path: KeyPath, aliases: Mapping[KeyPath, KeyPath]
    ) -> Service | None:
        data.setdefault("build", {} if not data.get("image") else None)
        if data["build"] is not None:
            build = data["build"]
            if self.source_path(build.get("path", "."), aliases.get(("build", "path"), (*path, "build", "path"))):
                self.source_path(
                    build.get("manifest", "Dockerfile"),
                    aliases.get(("build", "manifest"), (*path, "build", "manifest")),
                    base=build.get("path", "."),
                )
        health = data.get("health")
        if isinstance(health, dict):
            self.health_path(health.get("path"), aliases.get(("health", "path"), (*path, "health", "path")))
        try:
            return Service.model_validate(data)
        except ValidationError as exc:
            self.problems.validation(exc, path, aliases)
            return None


class _ConvoxParser(_Parser):
    TOP = ("environment", "resources", "services")
    TOP_UNSUPPORTED = ("params", "timers", "balancers", "appSettings", "labels")
    SERVICE = ("build", "image", "command", "environment", "port", "internal", "health", "scale", "resources")
    SERVICE_UNSUPPORTED = (
        "agent",
        "deployment",
        "domain",
        "drain",
        "init",
        "links",
        "singleton",
        "sticky",
        "termination",
        "test",
        "tls",
        "volumes",
        "whitelist",
    )

    def parse(self, document: Any) -> Manifest | None:
        if document is None:
            self.error((), "the manifest is empty: declare at least one service under services")
            return None
        top = self.mapping(document, (), "a map of environment, resources and services")
        if top is None:
            return None
        self.check_keys(top, (), self.TOP, self.TOP_UNSUPPORTED)
        environment = self.environment(top.get("environment"), ("environment",))
        resources = self.resources(top.get("resources"))
        services: dict[str, Service] = {}
        raw_services = self.mapping(top.get("services"), ("services",), "a map of service names to services")
        if raw_services is not None and not raw_services:
            self.error(("services",), "at least one service is required")
        for name, body in (raw_services or {}).items():
            service = self.service(name, body, resources)
            if service is not None:
                services[name] = service
        if self.problems.items:
            return None
        return Manifest(environment=environment, resources=resources, services=services)

    def resources(self, value: Any) -> dict[str, ResourceSpec]:
        out: dict[str, ResourceSpec] = {}
        raw = self.mapping(value, ("resources",), "a map of resource names to resources")
        for name, body in (raw or {}).items():
            path: KeyPath = ("resources", name)
            self.name(name, path, "resource")
            spec = self.mapping(body, path, "a map of type and options")
            if spec is None:
                continue
            self.check_keys(spec, path, ("type", "options"))
            kind = spec.get("type")
            if kind is None:
                self.error((*path, "type"), f"is required (one of {', '.join(RESOURCE_TYPES)})")
                continue
            if kind not in RESOURCE_TYPES:
                self.error((*path, "type"), f"must be one of {', '.join(RESOURCE_TYPES)}, got {_describe(kind)}")
                continue
            out[name] = ResourceSpec(type=kind, options=self.string_map(spec.get("options"), (*path, "options")))
        return out

    def service(self, name: str, body: Any, resources: Mapping[str, ResourceSpec]) -> Service | None:
        path: KeyPath = ("services", name)
        named = self.name(name, path, "service")
        raw = self.mapping(body, path, "a map")
        if raw is None or not named:
            return None
        self.check_keys(raw, path, self.SERVICE, self.SERVICE_UNSUPPORTED)
        aliases: dict[KeyPath, KeyPath] = {}
        data: dict[str, Any] = {"name": name}
        for key in ("image", "internal"):
            if raw.get(key) is not None:
                data[key] = raw[key]
        if raw.get("build") is not None and raw.get("image"):
            self.error(path, "has both build and image: a service is built from source or runs an image, not both")
        elif raw.get("build") is not None or not raw.get("image"):
            data["build"] = self.build(raw.get("build"), (*path, "build"), aliases)
        data["command"] = self.command(raw.get("command"), (*path, "command"))
        data["environment"] = self.environment(raw.get("environment"), (*path, "environment"))
        if raw.get("port") is not None:
            data["port"] = self.port(raw["port"], (*path, "port"), aliases)
        if raw.get("health") is not None:
            data["health"] = self.health(raw["health"], (*path, "health"), aliases)
        if raw.get("scale") is not None:
            data["scale"] = self.scale(raw["scale"], (*path, "scale"), aliases)
        data["resources"] = self.service_resources(raw.get("resources"), (*path, "resources"), resources)
        return self.validate_service({key: item for key, item in data.items() if item is not None}, path, aliases)

    def build(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> dict[str, Any] | None:
        if isinstance(value, str):
            aliases[("build", "path")] = path
            return {"path": value}
        spec = self.mapping(value, path, "a path, or a map of path, manifest and args")
        if spec is None:
            return None
        self.check_keys(spec, path, ("path", "manifest", "args"))
        out = {key: spec[key] for key in ("path", "manifest") if spec.get(key) is not None}
        if "args" in spec:
            out["args"] = self.string_map(spec["args"], (*path, "args"))
        return out

    def port(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> Any:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(?:(?:http|https):)?(\d+)\s*", value)
            if match:
                return int(match.group(1))
            self.error(path, f"must be a port like 3000 or https:3000, got {_describe(value)}")
            return None
        if isinstance(value, Mapping):
            spec = self.mapping(value, path) or {}
            self.check_keys(spec, path, ("port", "scheme"))
            scheme = spec.get("scheme", "http")
            if scheme not in ("http", "https"):
                self.error((*path, "scheme"), f"must be http or https, got {_describe(scheme)}")
            aliases[("port",)] = (*path, "port")
            if isinstance(spec.get("port"), str):
                return self.port(spec["port"], (*path, "port"), {})
            return spec.get("port")
        return value  # an int, or a wrong type the model reports

    def health(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> Any:
        if isinstance(value, str):
            aliases[("health", "path")] = path
            return {"path": value}
        spec = self.mapping(value, path, "a path, or a map of path, interval, timeout and grace")
        if spec is not None:
            self.check_keys(spec, path, ("path", "interval", "timeout", "grace"))
        return spec

    def scale(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            aliases[("scale", "count")] = path
            return {"count": value}
        if isinstance(value, str):
            count = self.count(value, path)
            aliases[("scale", "count")] = path
            return {"count": count}
        spec = self.mapping(value, path, 'a count, a range like "1-3", or a map of count, cpu and memory')
        if spec is None:
            return None
        self.check_keys(spec, path, ("count", "cpu", "memory"), ("targets",))
        if isinstance(spec.get("count"), str):
            spec["count"] = self.count(spec["count"], (*path, "count"))
        return spec

    def count(self, value: str, path: KeyPath) -> Any:
        """``"2"`` or a range ``"1-3"`` (its minimum: this rack does not autoscale)."""
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
        if not match:
            return value  # the model says what is wrong
        low = int(match.group(1))
        if match.group(2) is not None and int(match.group(2)) < low:
            self.error(path, f"the range {_describe(value)} is backwards: the minimum comes first")
        return low

    def service_resources(self, value: Any, path: KeyPath, declared: Mapping[str, ResourceSpec]) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list of resource names, got {_describe(value)}")
            return []
        names: list[str] = []
        for index, name in enumerate(value):
            if not isinstance(name, str):
                self.error((*path, index), f"must be a resource name, got {_describe(name)}")
            elif name not in declared:
                known = ", ".join(declared) or "none are declared"
                self.error((*path, index), f"no resource named {_describe(name)} under resources ({known})")
            elif name not in names:
                names.append(name)
        return names


class _ComposeParser(_Parser):
    TOP_V2 = ("version", "services")
    TOP_V2_UNSUPPORTED = ("networks", "volumes", "secrets", "configs")
    SERVICE = ("build", "dockerfile", "image", "command", "environment", "ports", "links", "mem_limit", "labels")
    SERVICE_UNSUPPORTED = (
        "cap_add",
        "container_name",
        "cpu_shares",
        "depends_on",
        "deploy",
        "entrypoint",
        "env_file",
        "expose",
        "extra_hosts",
        "healthcheck",
        "hostname",
        "networks",
        "privileged",
        "restart",
        "volumes",
        "volumes_from",
        "working_dir",
    )
    PROTOCOLS = ("http", "https", "tcp", "tls")

    def parse(self, document: Any) -> Manifest | None:
        if document is None:
            self.error((), "the file is empty: declare at least one service")
            return None
        top = self.mapping(document, (), "a map of service names to services")
        if top is None:
            return None
        base: KeyPath = ()
        if "version" in top:  # version 2 and later: the services sit under services:
            self.check_keys(top, (), self.TOP_V2, self.TOP_V2_UNSUPPORTED)
            base = ("services",)
            top = self.mapping(top.get("services"), base, "a map of service names to services") or {}
        if not top:
            self.error(base, "at least one service is required")
        services: dict[str, Service] = {}
        for name, body in top.items():
            service = self.service(name, body, (*base, name))
            if service is not None:
                services[name] = service
        if self.problems.items:
            return None
        return Manifest(services=services)

    def service(self, name: str, body: Any, path: KeyPath) -> Service | None:
        named = self.name(name, path, "service")
        raw = self.mapping(body, path, "a map")
        if raw is None or not named:
            return None
        self.check_keys(raw, path, self.SERVICE, self.SERVICE_UNSUPPORTED)
        aliases: dict[KeyPath, KeyPath] = {}
        data: dict[str, Any] = {"name": name}
        build = self.build(raw, path, aliases)
        if raw.get("image") is not None and not isinstance(raw["image"], str):
            self.error((*path, "image"), f"must be a string, got {_describe(raw['image'])}")
        if build is not None:
            data["build"] = build  # with an image too, compose builds and names the image: the build wins
        elif isinstance(raw.get("image"), str):
            data["image"] = raw["image"]
        data["command"] = self.command(raw.get("command"), (*path, "command"))
        data["environment"] = self.environment(raw.get("environment"), (*path, "environment"))
        self.ports(raw.get("ports"), (*path, "ports"), data)
        if raw.get("links") is not None and not isinstance(raw["links"], list):
            self.error((*path, "links"), f"must be a list, got {_describe(raw['links'])}")
        if raw.get("mem_limit") is not None:
            memory = self.memory(raw["mem_limit"], (*path, "mem_limit"))
            if memory is not None:
                data["scale"] = {"memory": memory}
        self.labels(raw.get("labels"), (*path, "labels"), data, aliases)
        return self.validate_service({key: item for key, item in data.items() if item is not None}, path, aliases)

    def build(self, raw: Mapping[str, Any], path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> dict[str, Any] | None:
        value = raw.get("build")
        out: dict[str, Any] = {}
        if isinstance(value, str):
            out["path"] = value
            aliases[("build", "path")] = (*path, "build")
        elif value is not None:
            spec = self.mapping(value, (*path, "build"), "a path, or a map of context, dockerfile and args") or {}
            self.check_keys(spec, (*path, "build"), ("context", "dockerfile", "args"))
            if spec.get("context") is not None:
                out["path"] = spec["context"]
                aliases[("build", "path")] = (*path, "build", "context")
            if spec.get("dockerfile") is not None:
                out["manifest"] = spec["dockerfile"]
                aliases[("build", "manifest")] = (*path, "build", "dockerfile")
            if spec.get("args") is not None:
                out["args"] = self.string_map(spec["args"], (*path, "build", "args"))
                aliases[("build", "args")] = (*path, "build", "args")
        if raw.get("dockerfile") is not None:
            if "manifest" in out:
                self.error((*path, "dockerfile"), "the Dockerfile is already named by build.dockerfile")
            out["manifest"] = raw["dockerfile"]
            aliases[("build", "manifest")] = (*path, "dockerfile")
        if value is None and not out and raw.get("image"):
            return None
        return out

    def ports(self, value: Any, path: KeyPath, data: dict[str, Any]) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.error(path, f'must be a list like ["80:3000"], got {_describe(value)}')
            return
        if len(value) > 1:
            self.error((*path, 1), f"only one port per service is supported, got {len(value)} ports")
        if not value:
            return
        first = value[0]
        where = (*path, 0)
        text = _text(first) if isinstance(first, int | str) and not isinstance(first, bool) else None
        match = re.fullmatch(r"\s*(?:(\d+):)?(\d+)(?:/(tcp|udp))?\s*", text or "")
        if match is None:
            self.error(where, f'must be "BALANCER:CONTAINER" like "80:3000", or "PORT", got {_describe(first)}')
            return
        if match.group(3) == "udp":
            self.error(where, "udp ports are not supported")
        for number in (match.group(1), match.group(2)):
            if number is not None and not 1 <= int(number) <= 65535:
                self.error(where, f"ports are 1 to 65535, got {_describe(first)}")
                return
        data["port"] = int(match.group(2))
        data["internal"] = match.group(1) is None

    def memory(self, value: Any, path: KeyPath) -> int | None:
        """``mem_limit``: bytes, or a number with b/k/m/g (``"512m"``), as whole MB rounded up."""
        if isinstance(value, int) and not isinstance(value, bool):
            size = float(value)
        else:
            match = re.fullmatch(
                r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*", value.lower() if isinstance(value, str) else ""
            )
            if match is None:
                self.error(path, f'must be a size like "512m" or "1g", got {_describe(value)}')
                return None
            size = float(match.group(1)) * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]
        megabytes = math.ceil(size / 1024**2)
        if megabytes < 4:
            self.error(path, f"must be at least 4m, got {_describe(value)}")
            return None
        return megabytes

    def labels(self, value: Any, path: KeyPath, data: dict[str, Any], aliases: dict[KeyPath, KeyPath]) -> None:
        labels = self.string_map(value, path)
        health: dict[str, Any] = {}
        for field in ("path", "interval", "timeout"):
            label = f"convox.health.{field}"
            if label in labels:
                health[field] = labels[label]
                aliases[("health", field)] = (*path, label)
        if health:
            data["health"] = health
        if labels.get("convox.balancer", "").lower() == "false":
            data["internal"] = True
        for label, text in labels.items():
            if re.fullmatch(r"convox\.port\.\d+\.protocol", label) and text not in self.PROTOCOLS:
                self.error((*path, label), f"must be one of {', '.join(self.PROTOCOLS)}, got {_describe(text)}")
