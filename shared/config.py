"""Settings: one pydantic-settings class per service, each with its own env prefix."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr

from shared.settings import BaseSettings, SettingsConfigDict
from shared.topology import INTERNAL_HEADER as INTERNAL_HEADER
from shared.topology import SERVICES as SERVICES


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "convox" / "rack"


class RackSettings(BaseSettings):
    """What every service of one rack shares (env prefix ``RACK_``)."""

    model_config = SettingsConfigDict(env_prefix="RACK_", extra="ignore")

    name: str = Field("convox", description="The rack's name; labels every container it starts.")
    data_dir: Path = Field(default_factory=default_data_dir)
    provider: str = "local"
    internal_secret: SecretStr = SecretStr("")
    balancer_host: str = Field("127.0.0.1", description="Where apps' balancers listen (the gateway's host).")

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def socket_path(self, service: str) -> Path:
        return self.run_dir / f"{service}.sock"


class GatewaySettings(BaseSettings):
    """The public listener (env prefix ``RACK_GATEWAY_``)."""

    model_config = SettingsConfigDict(env_prefix="RACK_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 5443


class LocalProviderSettings(BaseSettings):
    """The embedded provider (env prefix ``RACK_LOCAL_``)."""

    model_config = SettingsConfigDict(env_prefix="RACK_LOCAL_", extra="ignore")

    docker_url: str | None = Field(None, description="Docker Engine address; DOCKER_HOST or the socket if unset.")
    network: str = Field("", description="The rack's Docker network; '<rack>' when empty.")
    docker_timeout: float = Field(
        30.0, gt=0, description="Seconds any one Docker Engine call may take (streams: to connect) before a 503."
    )
    balancer_orphan_seconds: float = Field(
        900.0,
        gt=0,
        description="The balancer process outlives the rack's restarts; it stops after this long with no rack.",
    )
