"""convox.yml (Convox generation 2): environment, resources, services and timers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.manifest.errors import KeyPath, describe
from shared.manifest.model import Manifest, ResourceSpec, Service, Timer
from shared.manifest.parser import Parser
from shared.manifest.timers import schedule_problem

RESOURCE_TYPES = ("mariadb", "memcached", "mysql", "postgres", "redis")


class ConvoxParser(Parser):
    TOP = ("environment", "resources", "services", "timers")
    TOP_UNSUPPORTED = ("params", "balancers", "appSettings", "labels")
    SERVICE = (
        "build",
        "image",
        "command",
        "environment",
        "port",
        "ports",
        "internal",
        "health",
        "scale",
        "resources",
        "links",
        "volumes",
        "deployment",
        "termination",
        "drain",
        "singleton",
    )
    SERVICE_UNSUPPORTED = (
        "agent",
        "annotations",
        "certificate",
        "domain",
        "init",
        "internalRouter",
        "labels",
        "lifecycle",
        "policies",
        "privileged",
        "sticky",
        "tags",
        "test",
        "timeout",
        "tls",
        "whitelist",
        "ingressAnnotations",
        "accessControl",
        "grpcHealthEnabled",
        "nodeSelectorLabels",
        "dnsConfig",
        "configMounts",
        "gpu",
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
        links: dict[str, list[tuple[KeyPath, str]]] = {}
        raw_services = self.mapping(top.get("services"), ("services",), "a map of service names to services")
        if raw_services is not None and not raw_services:
            self.error(("services",), "at least one service is required")
        for name, body in (raw_services or {}).items():
            service = self.service(name, body, resources, links)
            if service is not None:
                services[name] = service
        self.check_links(links, set(raw_services or {}))
        timers = self.timers(top.get("timers"), raw_services or {})
        if self.problems.items:
            return None
        return Manifest(environment=environment, resources=resources, services=services, timers=timers)

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
                self.error((*path, "type"), f"must be one of {', '.join(RESOURCE_TYPES)}, got {describe(kind)}")
                continue
            out[name] = ResourceSpec(type=kind, options=self.string_map(spec.get("options"), (*path, "options")))
        return out

    def timers(self, value: Any, services: Mapping[str, Any]) -> dict[str, Timer]:
        out: dict[str, Timer] = {}
        raw = self.mapping(value, ("timers",), "a map of timer names to schedule, command and service")
        for name, body in (raw or {}).items():
            path: KeyPath = ("timers", name)
            if not self.name(name, path, "timer"):
                continue
            spec = self.mapping(body, path, "a map of schedule, command and service")
            if spec is None:
                continue
            self.check_keys(spec, path, ("schedule", "command", "service"), ("concurrency",))
            ok = True
            for key in ("schedule", "command", "service"):
                if not isinstance(spec.get(key), str) or not spec[key].strip():
                    self.error((*path, key), f"is required (a string), got {describe(spec.get(key))}")
                    ok = False
            if not ok:
                continue
            problem = schedule_problem(spec["schedule"])
            if problem:
                self.error((*path, "schedule"), problem)
                continue
            if spec["service"] not in services:
                known = ", ".join(services) or "none"
                self.error((*path, "service"), f"no service named {describe(spec['service'])} ({known})")
                continue
            out[name] = Timer(
                name=name, schedule=spec["schedule"].strip(), command=spec["command"].strip(), service=spec["service"]
            )
        return out

    def service(
        self,
        name: str,
        body: Any,
        resources: Mapping[str, ResourceSpec],
        links: dict[str, list[tuple[KeyPath, str]]],
    ) -> Service | None:
        path: KeyPath = ("services", name)
        named = self.name(name, path, "service")
        raw = self.mapping(body, path, "a map")
        if raw is None or not named:
            return None
        self.check_keys(raw, path, self.SERVICE, self.SERVICE_UNSUPPORTED)
        aliases: dict[KeyPath, KeyPath] = {}
        data: dict[str, Any] = {"name": name}
        for key in ("image", "internal", "drain", "singleton"):
            if raw.get(key) is not None:
                data[key] = raw[key]
        if raw.get("build") is not None and raw.get("image"):
            self.error(path, "has both build and image: a service is built from source or runs an image, not both")
        elif raw.get("build") is not None or not raw.get("image"):
            data["build"] = self.build(raw.get("build"), (*path, "build"), aliases)
        data["command"] = self.command(raw.get("command"), (*path, "command"))
        data["environment"] = self.environment(raw.get("environment"), (*path, "environment"))
        internal = raw.get("internal") is True
        ports: list[dict[str, Any]] = []
        if raw.get("port") is not None:
            main = self.port(raw["port"], (*path, "port"), aliases)
            if main is not None:
                container, protocol = main
                data["port"] = container
                if isinstance(container, int) and not isinstance(container, bool) and 1 <= container <= 65535:
                    ports.append({"container": container, "public": not internal, "protocol": protocol})
        ports.extend(self.extra_ports(raw.get("ports"), (*path, "ports"), ports))
        data["ports"] = ports
        if raw.get("health") is not None:
            data["health"] = self.health(raw["health"], (*path, "health"), aliases)
        if raw.get("scale") is not None:
            data["scale"] = self.scale(raw["scale"], (*path, "scale"), aliases)
        data["resources"] = self.service_resources(raw.get("resources"), (*path, "resources"), resources)
        links[name] = self.links(raw.get("links"), (*path, "links"))
        data["links"] = [target for _, target in links[name]]
        data["volumes"] = self.volumes(raw.get("volumes"), (*path, "volumes"))
        if raw.get("deployment") is not None:
            spec = self.mapping(raw["deployment"], (*path, "deployment"), "a map of minimum and maximum")
            if spec is not None:
                self.check_keys(spec, (*path, "deployment"), ("minimum", "maximum"))
                data["deployment"] = spec
        if raw.get("termination") is not None:
            spec = self.mapping(raw["termination"], (*path, "termination"), "a map with grace")
            if spec is not None:
                self.check_keys(spec, (*path, "termination"), ("grace",))
                if spec.get("grace") is not None:
                    data["termination_grace"] = spec["grace"]
                    aliases[("termination_grace",)] = (*path, "termination", "grace")
        return self.validate_service({key: item for key, item in data.items() if item is not None}, path, aliases)

    def build(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> dict[str, Any] | None:
        if isinstance(value, str):
            aliases[("build", "path")] = path
            return {"path": value}
        spec = self.mapping(value, path, "a path, or a map of path, manifest and args")
        if spec is None:
            return None
        self.check_keys(spec, path, ("path", "manifest", "args"))
        out: dict[str, Any] = {key: spec[key] for key in ("path", "manifest") if spec.get(key) is not None}
        if "args" in spec:
            bare: list[str] = []
            out["args"] = self.string_map(spec["args"], (*path, "args"), bare)
            out["required_args"] = bare
        return out

    def port(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> tuple[Any, str] | None:
        """``3000``, ``https:3000`` or ``{port: 3000, scheme: https}``: the container port and the protocol the
        balancer speaks to clients (https terminates TLS there)."""
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(?:(http|https):)?(\d+)\s*", value)
            if match:
                return int(match.group(2)), match.group(1) or "http"
            self.error(path, f"must be a port like 3000 or https:3000, got {describe(value)}")
            return None
        if isinstance(value, Mapping):
            spec = self.mapping(value, path) or {}
            self.check_keys(spec, path, ("port", "scheme"))
            scheme = spec.get("scheme", "http")
            if scheme not in ("http", "https"):
                self.error((*path, "scheme"), f"must be http or https, got {describe(scheme)}")
                return None
            aliases[("port",)] = (*path, "port")
            if isinstance(spec.get("port"), str):
                inner = self.port(spec["port"], (*path, "port"), {})
                return None if inner is None else (inner[0], scheme)
            return spec.get("port"), scheme
        return value, "http"  # an int, or a wrong type the model reports

    def extra_ports(self, value: Any, path: KeyPath, main: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``ports: [5000, "5001/tcp"]``: more container ports, reachable on the rack network only."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list of ports like [5000], got {describe(value)}")
            return []
        out: list[dict[str, Any]] = []
        taken = {port["container"] for port in main}
        for index, item in enumerate(value):
            where = (*path, index)
            text = str(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
            match = re.fullmatch(r"\s*(\d+)(?:/(tcp|udp))?\s*", text)
            if match is None or not 1 <= int(match.group(1)) <= 65535:
                self.error(where, f"must be a port from 1 to 65535 like 5000, got {describe(item)}")
                continue
            if match.group(2) == "udp":
                self.error(where, "udp ports are not supported by this rack's network")
                continue
            number = int(match.group(1))
            if number in taken:
                self.error(where, f"port {number} is declared twice")
                continue
            taken.add(number)
            out.append({"container": number, "public": False, "protocol": "tcp"})
        return out

    def health(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> Any:
        if isinstance(value, str):
            aliases[("health", "path")] = path
            return {"path": value}
        spec = self.mapping(value, path, "a path, or a map of path, interval, timeout and grace")
        if spec is not None:
            self.check_keys(spec, path, ("path", "interval", "timeout", "grace"), ("disable",))
        return spec

    def scale(self, value: Any, path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            aliases[("scale", "count")] = path
            return {"count": value}
        if isinstance(value, str):
            aliases[("scale", "count")] = path
            return self.count(value, path)
        spec = self.mapping(value, path, 'a count, a range like "1-3", or a map of count, cpu and memory')
        if spec is None:
            return None
        self.check_keys(spec, path, ("count", "cpu", "memory"), ("targets", "gpu", "limit"))
        if isinstance(spec.get("count"), str):
            spec.update(self.count(spec["count"], (*path, "count")))
        return spec

    def count(self, value: str, path: KeyPath) -> dict[str, Any]:
        """``"2"`` or a range ``"1-3"``: the minimum runs (this rack does not autoscale), the maximum is kept."""
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
        if not match:
            return {"count": value}  # the model says what is wrong
        low = int(match.group(1))
        if match.group(2) is None:
            return {"count": low}
        high = int(match.group(2))
        if high < low:
            self.error(path, f"the range {describe(value)} is backwards: the minimum comes first")
        return {"count": low, "count_max": high}

    def service_resources(self, value: Any, path: KeyPath, declared: Mapping[str, ResourceSpec]) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list of resource names, got {describe(value)}")
            return []
        names: list[str] = []
        for index, name in enumerate(value):
            if not isinstance(name, str):
                self.error((*path, index), f"must be a resource name, got {describe(name)}")
            elif name not in declared:
                known = ", ".join(declared) or "none are declared"
                self.error((*path, index), f"no resource named {describe(name)} under resources ({known})")
            elif name not in names:
                names.append(name)
        return names
