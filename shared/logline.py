"""What every provider's log lines share: their rendered prefix and which lines a filter wants.

Provider-neutral (no engine or cloud library): the local log store and the aws CloudWatch reader each keep
their own line record and call these on it.
"""

from __future__ import annotations

from typing import Protocol

EVENT_SERVICE = "convox"
"""The service name of the platform's own events in an app's log (``convox:RELEASE ...``)."""


class LogLine(Protocol):
    @property
    def service(self) -> str: ...
    @property
    def release(self) -> str: ...
    @property
    def pid(self) -> str: ...
    @property
    def text(self) -> str: ...


def line_source(line: LogLine) -> str:
    """``web:RNJYVQUMKKU/68831d3dce63`` (or ``convox:RNJYVQUMKKU`` for a line of no process), see ``LogsAPI``."""
    return f"{line.service}:{line.release}/{line.pid}" if line.pid else f"{line.service}:{line.release}"


def wanted(line: LogLine, service: str = "", pid: str = "", text: str = "") -> bool:
    """Lines of a process type (and the platform's events about it), of one process, containing a text."""
    if (
        service
        and line.service != service
        and not (line.service == EVENT_SERVICE and line.text.startswith(service + " "))
    ):
        return False
    if pid and line.pid != pid:
        return False
    return not (text and text not in line.text)
