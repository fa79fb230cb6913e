"""The types of backing service on AWS: where each one runs (RDS, or ElastiCache's redis and memcached), its
engine and URL, the ElastiCache id of a service, and a service's status from its AWS state."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shared.names import service_kind

CACHE_ID = re.compile(r"[a-z](?!.*--)[a-z0-9-]{0,39}(?<!-)")


@dataclass(frozen=True)
class Kind:
    """One type of backing service: where it runs (``rds``, ``redis``, ``memcached``) and its URL."""

    name: str
    service: str
    scheme: str
    port: int
    engine: str
    version: str = ""
    username: str = ""
    database: str = ""

    @property
    def secret(self) -> bool:
        return self.name != "memcached"

    def url(self, host: str, port: int, password: str) -> str:
        if not self.secret:
            return f"{self.scheme}://{host}:{port}"
        return f"{self.scheme}://{self.username}:{password}@{host}:{port}/{self.database}"


KINDS = {
    kind.name: kind
    for kind in (
        Kind("postgres", "rds", "postgres", 5432, "postgres", "18", "app", "app"),
        Kind("mysql", "rds", "mysql", 3306, "mysql", "8.4.11", "app", "app"),
        Kind("mariadb", "rds", "mysql", 3306, "mariadb", "11.8.9", "app", "app"),
        Kind("redis", "redis", "rediss", 6379, "redis", "7.1", "", "0"),
        Kind("memcached", "memcached", "memcached", 11211, "memcached", "1.6.22"),
    )
}


def kind_of(kind: str) -> Kind:
    return service_kind(KINDS, kind)


def cache_id(rack: str, name: str) -> str:
    """The ElastiCache id (also its subnet group's name) of service ``name``."""
    readable = f"{rack}-{name}"
    if CACHE_ID.fullmatch(readable):
        return readable
    return "r" + hashlib.sha256(f"{rack}/{name}".encode()).hexdigest()[:24]  # no dash: never a readable id


def live_status(kind: Kind, state: str | None) -> str:
    """A running service's status from its AWS state (None: AWS has no such instance or cache any more)."""
    if state is None:
        return "missing"
    if state in {"creating", "deleting"}:
        return state
    if state in {"stopped", "stopping"}:
        return "stopped"
    if state in {"rebooting", "starting", "rebooting cache cluster nodes"}:
        return "restarting"
    if "fail" in state or state.startswith(("incompatible", "inaccessible", "storage-full")):
        return "failed"
    return "running"  # available, and what keeps serving: backing-up, modifying, snapshotting, upgrading...
