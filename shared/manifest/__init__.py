"""The app manifest: `convox.yml` (Convox generation 2), or a 2015 `docker-compose.yml` when there is none.

Both are parsed into the same typed :class:`Manifest`; an error names the file, the key and what is wrong
(``convox.yml: services.web.scale.count: must be a whole number, got "many"``); keys this rack does not act
on are warnings kept in :attr:`Manifest.warnings`.

The API others call:

- :func:`find_manifest` picks the manifest file in an extracted source tree;
- :func:`parse_manifest` turns its text into a :class:`Manifest` (choosing the format by the file's name),
  filling ``${VAR}`` from the app's environment first;
- :func:`resolve_manifest` fills a stored manifest's variables again from a release's environment;
- :meth:`Manifest.service_environment` gives one service's environment for a release.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.manifest.compose import ComposeParser
from shared.manifest.convox import RESOURCE_TYPES, ConvoxParser
from shared.manifest.errors import ManifestError, Problems
from shared.manifest.files import MANIFEST_FILES, find_manifest, is_compose_file
from shared.manifest.model import (
    BuildSpec,
    Deployment,
    Health,
    Manifest,
    PortMapping,
    ResourceSpec,
    Scale,
    Service,
    Timer,
    Volume,
)
from shared.manifest.parser import SERVICE_NAME_PATTERN, SERVICE_NAME_RE
from shared.manifest.source import MAX_MANIFEST_CHARS, interpolate, load_yaml, uses_variables

__all__ = [
    "MANIFEST_FILES",
    "MAX_MANIFEST_CHARS",
    "RESOURCE_TYPES",
    "SERVICE_NAME_PATTERN",
    "SERVICE_NAME_RE",
    "BuildSpec",
    "Deployment",
    "Health",
    "Manifest",
    "ManifestError",
    "PortMapping",
    "ResourceSpec",
    "Scale",
    "Service",
    "Timer",
    "Volume",
    "find_manifest",
    "is_compose_file",
    "parse_manifest",
    "resolve_manifest",
]


def parse_manifest(text: str, filename: str, env: Mapping[str, str] | None = None) -> Manifest:
    """Parse ``text`` as the manifest named ``filename`` (convox.yml, or docker-compose.yml by its name).

    ``${VAR}`` and ``$VAR`` are filled from ``env`` (the app's environment) first; a variable it lacks is an
    error naming it. Without ``env`` (the CLI, before the rack has the app's environment) variables are left
    as written. Files named ``docker-compose*.yml`` (or ``.yaml``) are read as docker-compose; any other name
    as convox.yml. Every problem found is reported in one ManifestError: ``FILE: KEY.PATH: what is wrong; ...``.
    """
    filled = interpolate(text, env, filename)
    document = load_yaml(filled, filename)
    problems = Problems(filename)
    if is_compose_file(filename):
        manifest = ComposeParser(problems).parse(document)
    else:
        manifest = ConvoxParser(problems).parse(document)
    problems.raise_if_any()
    assert manifest is not None  # no problems means a manifest was made
    manifest.warnings = problems.warnings
    if uses_variables(text):
        manifest.source, manifest.filename = text, filename
    return manifest


def resolve_manifest(manifest: Manifest, env: Mapping[str, str]) -> Manifest:
    """The manifest as a release with ``env`` runs it: one that uses ``${VAR}`` is parsed again with ``env``
    (a variable it lacks is a ManifestError naming it, at promote time); any other is returned as it is."""
    if not manifest.source:
        return manifest
    return parse_manifest(manifest.source, manifest.filename, env)
