"""Settings read from the environment: a small stand-in for pydantic-settings' ``BaseSettings``.

pydantic-settings costs every process that imports it about 10 MiB of memory (its sources import
``pydantic.dataclasses`` and a tree of parsers for dotenv files, secrets directories, CLI arguments and JSON
values) for the one thing the rack's settings use: a field ``name`` of a class whose ``model_config`` has
``env_prefix="RACK_X_"`` is read from ``RACK_X_NAME`` (case-insensitive), a value given to the constructor
wins over the environment, and pydantic converts the text (lax mode: "5" -> 5, "true" -> True). Fields of
scalar types only (str, int, float, bool, Path, SecretStr and their optionals); the AWS provider's settings,
with lists read as JSON, keep pydantic-settings (they load on an AWS rack only).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class SettingsConfigDict(ConfigDict, total=False):
    env_prefix: str
    """The environment variables' prefix: field ``port`` of prefix ``RACK_GATEWAY_`` is ``RACK_GATEWAY_PORT``."""


class BaseSettings(BaseModel):
    """A model whose fields not given to the constructor are read from the environment, then defaulted."""

    model_config = SettingsConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        wanted = {f"{prefix}{name}".upper(): name for name in cls.model_fields}
        values = {wanted[key.upper()]: text for key, text in os.environ.items() if key.upper() in wanted}
        values.update(data)
        return values
