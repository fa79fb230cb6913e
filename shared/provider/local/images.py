"""Names of the images the local provider builds: one per process type per build."""

from __future__ import annotations


def image_name(rack: str, app: str, service: str, build: str) -> str:
    """``convox/RACK-APP-SERVICE:bxxxxxxxxxx`` (docker wants lowercase repositories and tags)."""
    return f"convox/{rack}-{app}-{service}:{build.lower()}"
