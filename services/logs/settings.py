"""The logs service's settings (env prefix ``RACK_LOGS_``): how many streams it follows at once. How much
history each app keeps and how lines are ordered are the log store's (:mod:`shared.logstore.settings`)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class LogsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RACK_LOGS_", extra="ignore")

    max_follows: int = Field(
        500, ge=1, description="Most log streams followed at once (websocket or plain GET); past it, 429."
    )
