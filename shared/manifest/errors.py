"""How a manifest's problems are reported: one ManifestError naming the file and every key at fault."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.errors import BadRequest

KeyPath = tuple[str | int, ...]


class ManifestError(BadRequest):
    """A manifest that cannot be used; the message names the file and the key."""


def whole_number(value: Any) -> Any:
    """YAML's ``true`` is not a count (pydantic would take it as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, got {describe(value)}")
    return value


def yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "not valid YAML"
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
    return f"invalid YAML: {problem}"


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def describe(value: Any) -> str:
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


def text(value: Any) -> str:
    """A YAML scalar as the string a program sees in its environment (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple)


class Problems:
    """Collects every problem of a manifest, so one error lists them all."""

    LIMIT = 20

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.items: list[str] = []
        self.warnings: list[str] = []

    def warn(self, path: KeyPath, message: str) -> None:
        """A key Convox knows (or an unknown one) that this rack does not act on: said, and the file goes on."""
        self.warnings.append(f"{self.filename}: {format_path(path)} {message}")

    def add(self, path: KeyPath, message: str) -> None:
        self.items.append(f"{format_path(path)}: {message}" if path else message)

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
            self.add(where, validation_message(error))


def validation_message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = describe(error.get("input"))
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
