"""docker-compose.yml as Convox generation 1 reads it: version 1 (services at the top) or 2 (under services),
``convox.*`` labels for ports, health, drain and cron timers."""

from __future__ import annotations

import math
import re
from typing import Any

from shared.manifest.errors import KeyPath, describe, text
from shared.manifest.model import Manifest, Service, Timer
from shared.manifest.parser import NOT_SUPPORTED, Parser
from shared.manifest.timers import schedule_problem

COMPOSE_VERSIONS = ("1", "2", "2.0", "2.1", "2.2", "2.3", "2.4")


class ComposeParser(Parser):
    TOP_V2 = ("version", "services")
    TOP_V2_UNSUPPORTED = ("networks", "volumes", "secrets", "configs")
    SERVICE = (
        "build",
        "dockerfile",
        "image",
        "command",
        "environment",
        "ports",
        "links",
        "mem_limit",
        "labels",
        "volumes",
    )
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
        "logging",
        "networks",
        "privileged",
        "restart",
        "stop_signal",
        "tty",
        "ulimits",
        "user",
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
        if "version" in top:  # version 2: the services sit under services:
            version = text(top["version"]).strip()
            if version not in COMPOSE_VERSIONS:
                self.error(
                    ("version",),
                    f"unknown compose version {describe(top['version'])}: this rack reads version 1 and 2 "
                    '(as Convox generation 1 does; write version: "2")',
                )
                return None
            if version != "1":
                self.check_keys(top, (), self.TOP_V2, self.TOP_V2_UNSUPPORTED)
                base = ("services",)
                top = self.mapping(top.get("services"), base, "a map of service names to services") or {}
            else:
                top = {key: value for key, value in top.items() if key != "version"}
        if not top:
            self.error(base, "at least one service is required")
        services: dict[str, Service] = {}
        links: dict[str, list[tuple[KeyPath, str]]] = {}
        timers: dict[str, Timer] = {}
        for name, body in top.items():
            service = self.service(name, body, (*base, name), links, timers)
            if service is not None:
                services[name] = service
        self.check_links(links, set(top))
        if self.problems.items:
            return None
        return Manifest(services=services, timers=timers)

    def service(
        self,
        name: str,
        body: Any,
        path: KeyPath,
        links: dict[str, list[tuple[KeyPath, str]]],
        timers: dict[str, Timer],
    ) -> Service | None:
        named = self.name(name, path, "service")
        raw = self.mapping(body, path, "a map")
        if raw is None or not named:
            return None
        self.check_keys(raw, path, self.SERVICE, self.SERVICE_UNSUPPORTED)
        aliases: dict[KeyPath, KeyPath] = {}
        data: dict[str, Any] = {"name": name}
        build = self.build(raw, path, aliases)
        if raw.get("image") is not None and not isinstance(raw["image"], str):
            self.error((*path, "image"), f"must be a string, got {describe(raw['image'])}")
        if build is not None:
            data["build"] = build  # with an image too, compose builds and names the image: the build wins
        elif isinstance(raw.get("image"), str):
            data["image"] = raw["image"]
        data["command"] = self.command(raw.get("command"), (*path, "command"))
        data["environment"] = self.environment(raw.get("environment"), (*path, "environment"))
        self.ports(raw.get("ports"), (*path, "ports"), data)
        links[name] = self.links(raw.get("links"), (*path, "links"))
        data["links"] = [target for _, target in links[name]]
        data["volumes"] = self.volumes(raw.get("volumes"), (*path, "volumes"))
        if raw.get("mem_limit") is not None:
            memory = self.memory(raw["mem_limit"], (*path, "mem_limit"))
            if memory is not None:
                data["scale"] = {"memory": memory}
        self.labels(name, raw.get("labels"), (*path, "labels"), data, aliases, timers)
        return self.validate_service({key: item for key, item in data.items() if item is not None}, path, aliases)

    def build(self, raw: dict[str, Any], path: KeyPath, aliases: dict[KeyPath, KeyPath]) -> dict[str, Any] | None:
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
                bare: list[str] = []
                out["args"] = self.string_map(spec["args"], (*path, "build", "args"), bare)
                out["required_args"] = bare
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
        """``["80:3000", "443:3001", "5432"]``: ``BALANCER:CONTAINER`` is public on the balancer, ``PORT`` alone
        is reachable on the rack network only. The first container port is the main one ($PORT)."""
        if value is None:
            return
        if not isinstance(value, list):
            self.error(path, f'must be a list like ["80:3000"], got {describe(value)}')
            return
        mappings: list[dict[str, Any]] = []
        for index, item in enumerate(value):
            where = (*path, index)
            spelled = text(item) if isinstance(item, int | str) and not isinstance(item, bool) else ""
            match = re.fullmatch(r"\s*(?:(\d+):)?(\d+)(?:/(tcp|udp))?\s*", spelled)
            if match is None:
                self.error(where, f'must be "BALANCER:CONTAINER" like "80:3000", or "PORT", got {describe(item)}')
                continue
            if match.group(3) == "udp":
                self.error(where, "udp ports are not supported by this rack's balancer")
                continue
            numbers = [int(number) for number in match.group(1, 2) if number is not None]
            if not all(1 <= number <= 65535 for number in numbers):
                self.error(where, f"ports are 1 to 65535, got {describe(item)}")
                continue
            balancer = int(match.group(1)) if match.group(1) else None
            if balancer is not None and any(mapping.get("balancer") == balancer for mapping in mappings):
                self.error(where, f"balancer port {balancer} is declared twice")
                continue
            mappings.append({"container": int(match.group(2)), "balancer": balancer, "public": balancer is not None})
        if mappings:
            data["port"] = mappings[0]["container"]
            data["internal"] = not mappings[0]["public"]
            data["ports"] = mappings

    def memory(self, value: Any, path: KeyPath) -> int | None:
        """``mem_limit``: bytes, or a number with b/k/m/g (``"512m"``), as whole MB rounded up."""
        if isinstance(value, int) and not isinstance(value, bool):
            size = float(value)
        else:
            match = re.fullmatch(
                r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*", value.lower() if isinstance(value, str) else ""
            )
            if match is None:
                self.error(path, f'must be a size like "512m" or "1g", got {describe(value)}')
                return None
            size = float(match.group(1)) * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]
        megabytes = math.ceil(size / 1024**2)
        if megabytes < 4:
            self.error(path, f"must be at least 4m, got {describe(value)}")
            return None
        return megabytes

    def labels(
        self,
        service: str,
        value: Any,
        path: KeyPath,
        data: dict[str, Any],
        aliases: dict[KeyPath, KeyPath],
        timers: dict[str, Timer],
    ) -> None:
        labels = self.string_map(value, path)
        health: dict[str, Any] = {}
        for label, spelled in labels.items():
            where = (*path, label)
            if not label.startswith("convox."):
                continue  # the app's own labels
            parts = label.split(".")
            if label in ("convox.health.path", "convox.health.interval", "convox.health.timeout"):
                health[parts[2]] = spelled
                aliases[("health", parts[2])] = where
            elif label == "convox.balancer":
                if spelled.lower() == "false":
                    data["internal"] = True
                    for mapping in data.get("ports", []):
                        mapping["public"] = False
            elif label in ("convox.deployment.minimum", "convox.deployment.maximum"):
                data.setdefault("deployment", {})[parts[2]] = spelled
                aliases[("deployment", parts[2])] = where
            elif label == "convox.draining.timeout":
                data["drain"] = spelled
                aliases[("drain",)] = where
            elif len(parts) == 4 and parts[1] == "port" and parts[3] == "protocol":
                self.port_protocol(parts[2], spelled, where, data)
            elif len(parts) == 3 and parts[1] == "cron":
                self.cron(service, parts[2], spelled, where, timers)
            else:
                self.problems.warn(where, NOT_SUPPORTED)
        if health:
            data["health"] = health

    def port_protocol(self, port: str, protocol: str, where: KeyPath, data: dict[str, Any]) -> None:
        """``convox.port.443.protocol: tls``: what the balancer port 443 speaks to clients."""
        if protocol not in self.PROTOCOLS:
            self.error(where, f"must be one of {', '.join(self.PROTOCOLS)}, got {describe(protocol)}")
            return
        for mapping in data.get("ports", []):
            if port.isdigit() and mapping.get("balancer") == int(port):
                mapping["protocol"] = protocol
                return
        declared = ", ".join(str(mapping["balancer"]) for mapping in data.get("ports", []) if mapping["balancer"])
        self.error(where, f"no balancer port {port} under ports ({declared or 'none is public'})")

    def cron(self, service: str, name: str, spelled: str, where: KeyPath, timers: dict[str, Timer]) -> None:
        """``convox.cron.NAME: "*/5 * * * * command"``: five cron fields, then the command."""
        if not self.name(name, where, "timer"):
            return
        fields = spelled.split(None, 5)
        if len(fields) < 6:
            self.error(
                where,
                f'must be a 5-field cron schedule and a command, like "*/5 * * * * bin/job", got {describe(spelled)}',
            )
            return
        schedule = " ".join(fields[:5])
        problem = schedule_problem(schedule)
        if problem:
            self.error(where, problem)
            return
        if name in timers:
            self.error(where, f"timer {name} is declared twice")
            return
        timers[name] = Timer(name=name, schedule=schedule, command=fields[5].strip(), service=service)
