"""A build's resources: before its release is made, the provisioner (which owns backing services) makes the
manifest's resources ready and linked, and answers with the variables the release gets (``DATABASE_URL``).

The provisioner is reached on its unix socket with the rack's internal secret, as it reaches the apps service.
A build whose manifest declares no resources, of an app that has none linked, asks nothing.
"""

from __future__ import annotations

import httpx

from shared.config import INTERNAL_HEADER, RackSettings
from shared.errors import RackError, Unavailable
from shared.manifest import Manifest
from shared.models import ResourceEnv
from shared.provider import Provider

TIMEOUT = 900.0
"""How long the provisioner may take: pulling an image, then a first start (bounded there by its own wait)."""


class ProvisionerResources:
    def __init__(self, settings: RackSettings, provider: Provider) -> None:
        self.socket = settings.socket_path("provisioner")
        self.secret = settings.internal_secret.get_secret_value()
        self.provider = provider

    async def __call__(self, app: str, manifest: Manifest) -> ResourceEnv:
        wanted = {name: spec.type for name, spec in manifest.resources.items()}
        if not wanted and not await self.provider.resources.declared(app):
            return ResourceEnv()
        # plain HTTP on a unix socket: verify=False spares loading the CA bundle (22 ms of CPU) for TLS never used
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket), verify=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://provisioner", timeout=TIMEOUT) as client:
            try:
                response = await client.post(
                    f"/apps/{app}/resources", json={"resources": wanted}, headers={INTERNAL_HEADER: self.secret}
                )
            except httpx.TimeoutException:
                raise RackError(f"the provisioner did not answer within {TIMEOUT:.0f}s", status=504) from None
            except httpx.TransportError:
                raise Unavailable("provisioner service unavailable") from None
        if response.status_code < 400:
            return ResourceEnv.model_validate(response.json())
        try:
            message = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = f"provisioner answered {response.status_code}"
        raise RackError(message, status=response.status_code)
