"""Path parameters of the API, each validated by a full-match pattern before a handler sees it: a name with a
control or non-ASCII character is bad input (400), never something a handler, a query or a path is built
from. (pydantic's patterns are Rust regexes: ``$`` is the end of the text, never before a newline.)"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from shared.manifest import SERVICE_NAME_PATTERN
from shared.names import APP_NAME_PATTERN, ENV_KEY_PATTERN

ID_PATTERN = r"^[A-Z][A-Z0-9]{1,63}$"
PID_PATTERN = r"^[0-9a-f]{1,64}$"


def _path(description: str, pattern: str, max_length: int, example: str) -> Any:
    return Path(description=description, pattern=pattern, max_length=max_length, examples=[example])


def app_path(description: str = "The app's name.", example: str = "myapp") -> Any:
    return _path(description, APP_NAME_PATTERN, 30, example)


def id_path(description: str, example: str) -> Any:
    return _path(description, ID_PATTERN, 64, example)


def pid_path(description: str = "The process id (a container id, 12 characters shown).") -> Any:
    return _path(description, PID_PATTERN, 64, "68831d3dce63")


def type_path(description: str = "The process type, as named in the manifest.") -> Any:
    return _path(description, SERVICE_NAME_PATTERN, 63, "web")


def env_key_path(description: str = "The variable.") -> Any:
    return _path(description, ENV_KEY_PATTERN, 256, "GREETING")


AppParam = Annotated[str, app_path()]
