"""The builds service's settings (env prefix ``RACK_BUILDS_``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class BuildsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RACK_BUILDS_", extra="ignore")

    max_source_size: int = Field(512 * MIB, ge=1, description="Largest source upload (the .tgz), in bytes.")
    max_extracted_size: int = Field(
        4096 * MIB, ge=1, description="Most bytes of file content an upload may expand to when extracted."
    )
    max_entries: int = Field(200_000, ge=1, description="Most files, directories and links in one upload.")
    max_uploads: int = Field(10, ge=1, description="Most source uploads received at once; past it, 429.")
    max_builds: int = Field(10, ge=1, description="Most builds running at once (rack-wide); past it, 429.")
