"""Names from outside (API paths and bodies, labels, state rows, file names) and the paths built from them.

Every pattern here is matched in full (``fullmatch``): ``"myapp\\n"`` is no app name, whatever ``$`` would
say. A name becomes a path only through :func:`under`, which refuses one that would resolve outside its root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from shared.errors import BadRequest

APP_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,29}$"
"""An app's (or a backing service's) name, as the OpenAPI document states it (JSON Schema: ``$`` is the end)."""
APP_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,29}")
ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"
IMAGE_PATTERN = (
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+|/)[a-z0-9]+)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
"""An image reference (``python:3.12-slim``, ``registry:5000/team/app:v1``, ``...@sha256:...``), at most 255
characters."""
IMAGE_RE = re.compile(IMAGE_PATTERN.removeprefix("^").removesuffix("$"))
ID_RE = re.compile(r"[A-Z][A-Z0-9]{1,63}")
"""A build or release id (``BAPRZPQKXNE``, ``RNJYVQUMKKU``)."""


OBJECT_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){0,15}")
"""A stored object's key: up to 16 ``/``-separated segments of letters, digits, ``.``, ``_`` and ``-``, none
starting with a dot (so no ``.``, ``..`` or hidden name), at most 255 characters (``sources/3f2a.tgz``)."""
MAX_OBJECT_KEY = 255


def check_object_key(key: str) -> str:
    """``key`` when it is a stored object's key (:data:`OBJECT_KEY_RE`), else BadRequest."""
    if not isinstance(key, str) or len(key) > MAX_OBJECT_KEY or OBJECT_KEY_RE.fullmatch(key) is None:
        shown = key[:80] if isinstance(key, str) else key
        raise BadRequest(
            f"invalid object key: {shown!r} (segments of letters, digits, '.', '_' and '-' separated by '/', "
            f"none starting with '.', at most {MAX_OBJECT_KEY} characters)"
        )
    return key


def url_key(name: str) -> str:
    """The variable a linked backing service is found by: ``my-db`` gives ``MY_DB_URL`` (a manifest's resource
    by its name in the manifest, ``database`` gives ``DATABASE_URL``, as Convox names them)."""
    return name.upper().replace("-", "_") + "_URL"


def is_app_name(name: object) -> bool:
    return isinstance(name, str) and APP_NAME_RE.fullmatch(name) is not None


def check_service_name(name: str) -> None:
    """A backing service's name: an app name's rules (BadRequest otherwise)."""
    if not is_app_name(name):
        raise BadRequest(
            f"invalid service name: {name!r} (lowercase letters, digits and dashes, starting with a letter, "
            "at most 30 characters)"
        )


def manifest_service(app: str, name: str) -> str:
    """The service that holds resource ``name`` of ``app``'s manifest: ``<app>-<name>``, as Convox names them."""
    service = f"{app}-{name}"
    if not is_app_name(service):
        raise BadRequest(
            f"resources.{name}: the service name {service} is too long (at most 30 characters, the app's "
            "name and the resource's together): give the resource a shorter name"
        )
    return service


ServiceKind = TypeVar("ServiceKind")
"""A provider's description of a backing-service type."""


def service_kind(kinds: Mapping[str, ServiceKind], kind: str) -> ServiceKind:
    """A backing-service type by its name in a provider's table of them (BadRequest naming the known ones)."""
    try:
        return kinds[kind]
    except KeyError:
        raise BadRequest(f"unknown service type: {kind!r} (known: {', '.join(sorted(kinds))})") from None


def is_image(name: object) -> bool:
    return isinstance(name, str) and len(name) <= 255 and IMAGE_RE.fullmatch(name) is not None


def is_env_key(key: object) -> bool:
    return isinstance(key, str) and ENV_KEY_RE.fullmatch(key) is not None


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def env_problem(env: dict[str, str]) -> str:
    """Why ``env`` cannot be an app's environment, or ``""``: every key a variable name, no value with NUL."""
    for key in sorted(env):
        if not is_env_key(key):
            return f"invalid environment variable name: {key!r} (letters, digits and _, not first a digit)"
        if "\x00" in env[key]:
            return f"invalid value of {key}: it contains a NUL character"
    return ""


def check_env(env: dict[str, str]) -> None:
    """:class:`BadRequest` unless ``env`` is a valid environment."""
    problem = env_problem(env)
    if problem:
        raise BadRequest(problem)


def parse_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(KEY, VALUE)``; :class:`BadRequest` for no ``=``, a bad key or a NUL in the value."""
    key, sep, value = text.partition("=")
    if not sep:
        raise BadRequest(f"expected KEY=VALUE, got {text!r}")
    check_env({key: value})
    return key, value


class OutsideRoot(ValueError):
    """A path built from a name that would resolve outside the directory it belongs under."""


def under(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused (:class:`OutsideRoot`) unless it resolves (links followed) strictly under
    ``root``: no part may be empty, ``.``, ``..``, absolute or hold a separator or NUL."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\x00" in part or (os.altsep and os.altsep in part):
            raise OutsideRoot(f"unsafe path component: {part!r}")
    path = root.joinpath(*parts)
    if not is_under(root, path):
        raise OutsideRoot(f"{path} leads outside {root}")
    return path


def is_under(root: Path, path: Path, *, or_root: bool = False) -> bool:
    """Whether ``path`` resolves (links followed) strictly under ``root`` (or to it, with ``or_root``)."""
    base = os.path.realpath(root)
    resolved = os.path.realpath(path)
    if resolved == base:
        return or_root
    return os.path.commonpath([base, resolved]) == base
