"""Finding the manifest in a source tree, and telling its format by its name."""

from __future__ import annotations

import fnmatch
import posixpath
from pathlib import Path

from shared.manifest.errors import ManifestError

MANIFEST_FILES = ("convox.yml", "docker-compose.yml")


def find_manifest(directory: Path, name: str | None = None) -> Path:
    """``name`` if given (relative to ``directory``), else convox.yml, else docker-compose.yml.

    The path returned keeps the name it was found by (its basename chooses the format); it never leads out
    of ``directory``, symbolic links included.
    """
    root = directory.resolve()
    if name:
        candidate = directory / name
        if not _inside(candidate, root):
            raise ManifestError(f"manifest {name}: must be a file inside the source")
        if not candidate.is_file():
            raise ManifestError(f"no manifest named {name} in the source")
        return candidate
    for filename in MANIFEST_FILES:
        candidate = directory / filename
        if candidate.is_file():
            if not _inside(candidate, root):
                raise ManifestError(f"{filename}: must be a file inside the source")
            return candidate
    raise ManifestError("no convox.yml or docker-compose.yml in the source")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def is_compose_file(filename: str) -> bool:
    """Whether ``filename`` names a docker-compose file (``docker-compose*.yml`` or ``.yaml``)."""
    base = posixpath.basename(filename.replace("\\", "/"))
    return fnmatch.fnmatchcase(base, "docker-compose*.yml") or fnmatch.fnmatchcase(base, "docker-compose*.yaml")
