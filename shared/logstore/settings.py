"""How a provider's log store keeps history and serves followers: the provider's own settings (env prefix
``RACK_LOGS_``), read where the store runs, never passed through the contract's methods."""

from __future__ import annotations

from pydantic import Field

from shared.logstore.history import Limits
from shared.settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class LogStoreSettings(BaseSettings):
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

    def limits(self) -> Limits:
        return Limits(
            max_bytes=self.history_max_bytes,
            max_age=self.history_max_age,
            order_window=self.order_window,
            follower_queue=self.follower_queue,
            max_line=self.max_line,
            poll_interval=self.poll_interval,
        )
