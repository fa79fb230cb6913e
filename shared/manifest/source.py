"""From a manifest's text to a YAML document, as Convox reads it: ``${VAR}`` filled from the app's
environment first, then YAML with anchors and merge keys (``<<: *base``, also the quoted ``"<<"``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.manifest.errors import ManifestError, yaml_problem

MAX_MANIFEST_CHARS = 1_000_000
_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(\{[^}]*\}?))")


def uses_variables(text: str) -> bool:
    """Whether ``text`` has a ``${VAR}`` or ``$VAR`` that a release's environment may fill (``$$`` is a dollar)."""
    return any(match.group(0) != "$$" for match in _VARIABLE.finditer(text))


def interpolate(text: str, env: Mapping[str, str] | None, filename: str) -> str:
    """``${VAR}`` and ``$VAR`` replaced by the app's environment; ``$$`` is one ``$``. A ``${VAR}`` the
    environment lacks is an error naming each; a bare ``$VAR`` it lacks stays as written (a shell variable in a
    command, like ``$PORT``). None: no environment yet, every variable left as it is."""
    if env is None:
        return text
    missing: list[str] = []
    bad: list[str] = []

    def fill(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(3) is not None:
            bad.append(match.group(0))
            return match.group(0)
        name = match.group(1) or match.group(2)
        if name not in env:
            if match.group(1) is None:
                return match.group(0)
            if name not in missing:
                missing.append(name)
            return match.group(0)
        return env[name]

    filled = _VARIABLE.sub(fill, text)
    if bad:
        raise ManifestError(f"{filename}: {bad[0]}: not a variable (write ${{NAME}} with letters, digits and _)")
    if missing:
        raise ManifestError(
            f"{filename}: uses variables the app's environment does not set: {', '.join(missing)} "
            f"(set with: convox env set {' '.join(name + '=...' for name in missing)})"
        )
    return filled


def load_yaml(text: str, filename: str) -> Any:
    import yaml  # only the code that parses pays for it (the CLI starts without it)

    if len(text) > MAX_MANIFEST_CHARS:
        raise ManifestError(f"{filename}: too large ({len(text)} characters, at most {MAX_MANIFEST_CHARS})")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{filename}: {yaml_problem(exc)}") from None
    return _merge_quoted(document, filename, 0)


def _merge_quoted(value: Any, filename: str, depth: int) -> Any:
    """Apply quoted ``"<<"`` merge keys (PyYAML merges only the plain ``<<``): the map's own keys win."""
    if depth > 100:
        raise ManifestError(f"{filename}: nested too deeply")
    if isinstance(value, list):
        return [_merge_quoted(item, filename, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[Any, Any] = {}
    merged = value.get("<<")
    if merged is not None:
        sources = merged if isinstance(merged, list) else [merged]
        for source in sources:
            if not isinstance(source, dict):
                raise ManifestError(f"{filename}: <<: must be a map or a list of maps to merge")
            for key, item in _merge_quoted(source, filename, depth + 1).items():
                out.setdefault(key, item)
    for key, item in value.items():
        if key != "<<":
            out[key] = _merge_quoted(item, filename, depth + 1)
    return out
