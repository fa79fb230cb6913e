"""Helpers of the manifest tests: a manifest's error message (checked free of pydantic's wording) and warnings."""

from __future__ import annotations

import pytest

from shared.manifest import ManifestError, parse_manifest


def error(text: str, filename: str = "convox.yml") -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, filename)
    message = caught.value.message
    assert "pydantic" not in message and "Input should" not in message and "Field required" not in message
    return message


def warnings(text: str, filename: str = "convox.yml") -> list[str]:
    return parse_manifest(text, filename).warnings
