"""Which internal service answers which path."""

from __future__ import annotations

import re

ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), service)
    for p, service in [
        (r"^/apps/[^/]+/processes/[^/]+/logs$", "logs"),
        (r"^/apps/[^/]+/processes(/.*)?$", "processes"),
        (r"^/apps/[^/]+/services/[^/]+/processes$", "processes"),
        (r"^/apps/[^/]+/builds(/.*)?$", "builds"),
        (r"^/apps/[^/]+/logs$", "logs"),
        (r"^/system/processes(/.*)?$", "processes"),
        (r"^/system/logs$", "logs"),
        (r"^/system/params$", "provisioner"),
        (r"^/services(/.*)?$", "provisioner"),
        (r"^/apps(/.*)?$", "apps"),
        (r"^/system(/.*)?$", "apps"),
    ]
]


def service_for(path: str) -> str | None:
    for pattern, service in ROUTES:
        if pattern.match(path):
            return service
    return None
