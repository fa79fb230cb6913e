"""The provisioner service's settings (env prefix ``RACK_PROVISIONER_``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import BaseSettings, SettingsConfigDict

GIB = 1024 * 1024 * 1024


class ProvisionerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RACK_PROVISIONER_", extra="ignore")

    max_import_size: int = Field(
        16 * GIB, ge=1, description="Largest dump `convox services import` may send, in bytes (past it, it fails)."
    )
    max_transfers: int = Field(4, ge=1, description="Most service exports and imports at once; past it, 429.")
