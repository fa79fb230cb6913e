"""What both manifest formats share: reading maps, environment lists, commands, names, volumes."""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from shared.manifest.errors import KeyPath, Problems, describe, is_scalar, text
from shared.manifest.model import Service

SERVICE_NAME_PATTERN = r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$"
"""Service and resource names become DNS labels (``web.myapp``)."""
SERVICE_NAME_RE = re.compile(SERVICE_NAME_PATTERN)
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NOT_SUPPORTED = "is not supported by this rack"


class Parser:
    """What both formats share: reading maps, environment lists, commands, names."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.add(path, message)

    def mapping(self, value: Any, path: KeyPath, what: str = "a map") -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, f"must be {what}, got {describe(value)}")
            return None
        return {text(key): item for key, item in value.items()}

    def check_keys(
        self, data: dict[str, Any], path: KeyPath, allowed: Iterable[str], unsupported: Iterable[str] = ()
    ) -> None:
        """Drop every key of ``data`` that is not ``allowed``, with a warning: Convox's keys this rack does not
        act on, and unknown ones (with the closest known key), never reject the file."""
        allowed = list(allowed)
        unsupported = set(unsupported)
        for key in [key for key in data if key not in allowed]:
            del data[key]
            if key.startswith("x-"):  # an extension field, as compose has them: a place for anchors
                continue
            if key in unsupported:
                self.problems.warn((*path, key), NOT_SUPPORTED)
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            self.problems.warn(
                (*path, key), "is not a key Convox knows" + (f' (did you mean "{close[0]}"?)' if close else "")
            )

    def name(self, name: str, path: KeyPath, kind: str) -> bool:
        if SERVICE_NAME_RE.fullmatch(name):
            return True
        self.error(
            path,
            f"invalid {kind} name {describe(name)}: lowercase letters, digits and dashes, starting with a "
            "letter, at most 63 characters, not ending with a dash",
        )
        return False

    def environment(self, value: Any, path: KeyPath) -> list[str]:
        """A list of ``KEY`` / ``KEY=default``, or a map (a null value means required), as the list form."""
        if value is None:
            return []
        entries: list[tuple[KeyPath, Any]] = []
        if isinstance(value, Mapping):
            entries = [((*path, text(key)), (key, item)) for key, item in value.items()]
        elif isinstance(value, list):
            entries = [((*path, index), item) for index, item in enumerate(value)]
        else:
            self.error(path, f"must be a list of KEY or KEY=default, got {describe(value)}")
            return []
        seen: set[str] = set()
        setting: str | None
        out: list[str] = []
        for where, entry in entries:
            if isinstance(entry, tuple):  # from a map: KEY: default (null: required)
                key, default = text(entry[0]), entry[1]
                if not is_scalar(default):
                    self.error(where, f"must be a single value, got {describe(default)}")
                    continue
                setting = None if default is None else text(default)
            elif isinstance(entry, str):
                key, sep, given = entry.partition("=")
                setting = given if sep else None
            else:
                hint = ""
                if isinstance(entry, Mapping) and len(entry) == 1:
                    ((name, default),) = entry.items()
                    hint = f" (write {name}={text(default)})"
                self.error(where, f"must be KEY or KEY=default, got {describe(entry)}{hint}")
                continue
            if key == "*" and setting is None:  # the whole app environment
                if key not in seen:
                    seen.add(key)
                    out.append(key)
            elif not ENV_KEY_RE.fullmatch(key):
                self.error(
                    where,
                    f"invalid variable name {describe(key)}: letters, digits and underscores, "
                    "not starting with a digit",
                )
            elif key in seen:
                self.error(where, f"{key} is declared twice")
            else:
                seen.add(key)
                out.append(key if setting is None else f"{key}={setting}")
        return out

    def string_map(self, value: Any, path: KeyPath, bare: list[str] | None = None) -> dict[str, str]:
        """A map of strings, or a list of ``KEY=VALUE`` (build args, labels, resource options). With ``bare``,
        a ``KEY`` alone (or a map's null value) is allowed and collected there (build args from the app's
        environment)."""
        if value is None:
            return {}
        out: dict[str, str] = {}
        if isinstance(value, list):
            for index, item in enumerate(value):
                key, sep, text_ = item.partition("=") if isinstance(item, str) else ("", "", "")
                if bare is not None and key and not sep and ENV_KEY_RE.fullmatch(key):
                    bare.append(key)
                    continue
                if not sep or not key:
                    self.error((*path, index), f"must be KEY=VALUE, got {describe(item)}")
                    continue
                out[key] = text_
            return out
        data = self.mapping(value, path, "a map of strings")
        for key, item in (data or {}).items():
            if item is None and bare is not None:
                bare.append(key)
                continue
            if not is_scalar(item):
                self.error((*path, key), f"must be a single value, got {describe(item)}")
                continue
            out[key] = text(item)
        return out

    def volumes(self, value: Any, path: KeyPath) -> list[dict[str, str]]:
        """``/data`` (a volume named after its path) or ``NAME:/path``; host paths (``./x:/y``, ``/a:/b``) are
        refused: a manifest never mounts the rack's host."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f'must be a list like ["/data"], got {describe(value)}')
            return []
        out: list[dict[str, str]] = []
        for index, item in enumerate(value):
            where = (*path, index)
            if not isinstance(item, str) or not item.strip():
                self.error(where, f'must be a path like "/data" or "NAME:/data", got {describe(item)}')
                continue
            source, sep, target = item.strip().partition(":")
            if not sep:
                source, target = "", source
            target = target.split(":", 1)[0]  # a mode (:ro) after the path
            if source and (source.startswith((".", "/", "~")) or not VOLUME_NAME_RE.fullmatch(source)):
                self.error(
                    where,
                    f"host paths are not mounted from a manifest, got {describe(item)} "
                    '(write "/data" or "NAME:/data" for a volume the rack keeps)',
                )
                continue
            if not posixpath.isabs(target) or posixpath.normpath(target) == "/":
                self.error(where, f"must mount at an absolute path other than /, got {describe(item)}")
                continue
            target = posixpath.normpath(target)
            name = source or re.sub(r"[^a-z0-9]+", "-", target.lower()).strip("-")
            if any(volume["path"] == target for volume in out):
                self.error(where, f"{target} is mounted twice")
                continue
            out.append({"name": name, "path": target})
        return out

    def links(self, value: Any, path: KeyPath) -> list[tuple[KeyPath, str]]:
        """``[redis]`` or compose's ``redis:alias`` (the alias is not used): checked later against the types."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list of process types, got {describe(value)}")
            return []
        out: list[tuple[KeyPath, str]] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.error((*path, index), f"must be a process type, got {describe(item)}")
                continue
            out.append(((*path, index), item.strip().split(":", 1)[0]))
        return out

    def check_links(self, links: Mapping[str, list[tuple[KeyPath, str]]], services: Collection[str]) -> None:
        for name, entries in links.items():
            for where, target in entries:
                if target == name:
                    self.error(where, f"service {name} cannot link to itself")
                elif target not in services:
                    known = ", ".join(sorted(services)) or "none"
                    self.error(where, f"service {name} links to {target}, which is not a service here ({known})")

    def command(self, value: Any, path: KeyPath) -> str | list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value.strip() or None
        if isinstance(value, list):
            words: list[str] = []
            for index, word in enumerate(value):
                if word is None or not is_scalar(word):
                    self.error((*path, index), f"must be a string, got {describe(word)}")
                    continue
                words.append(text(word))
            return words or None
        self.error(path, f"must be a string or a list of strings, got {describe(value)}")
        return None

    def source_path(self, value: Any, path: KeyPath, base: Any = ".") -> bool:
        """A path (build context, Dockerfile) must stay inside the uploaded source: False when it does not."""
        if not isinstance(value, str) or not isinstance(base, str):
            return False  # the model reports the wrong type
        joined = posixpath.normpath(posixpath.join(base, value))
        if posixpath.isabs(value) or joined == ".." or joined.startswith("../"):
            self.error(path, f"must be a path inside the source, got {describe(value)}")
            return False
        return True

    def health_path(self, value: Any, path: KeyPath) -> None:
        if isinstance(value, str) and not value.startswith("/"):
            self.error(path, f"must start with /, got {describe(value)}")

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
