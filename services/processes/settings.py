"""The processes service's settings (env prefix ``RACK_PROCESSES_``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import BaseSettings, SettingsConfigDict


class ProcessesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RACK_PROCESSES_", extra="ignore")

    max_sessions: int = Field(
        100, ge=1, description="Most exec and attached run sessions open at once (websockets); past it, 429."
    )
