"""The logs service's settings (env prefix ``RACK_LOGS_``): how much history each app keeps, how lines are
ordered and how followers are served."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class LogsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RACK_LOGS_", extra="ignore")

    history_max_bytes: int = Field(64 * MIB, ge=64 * 1024, description="Most bytes of history kept per app.")
    history_max_age: float = Field(7 * 86400.0, gt=0, description="Seconds a line stays in an app's history.")
    order_window: float = Field(
        0.1, ge=0, le=10, description="Seconds a line may wait for other processes' earlier lines (time order)."
    )
    follower_queue: int = Field(
        20_000, ge=100, description="Lines queued for a follower before it catches up from the history instead."
    )
    max_line: int = Field(MIB, ge=16 * 1024, le=64 * MIB, description="Longest line kept whole, in bytes.")
    poll_interval: float = Field(
        0.1, gt=0, le=5, description="Seconds between looks at the events table, build logs and the rack's log."
    )
    max_follows: int = Field(
        500, ge=1, description="Most log streams followed at once (websocket or plain GET); past it, 429."
    )
