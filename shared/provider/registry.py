"""Provider implementations by name, one subpackage each (the way uvicorn registers its loops)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from shared.errors import BadRequest

if TYPE_CHECKING:
    from shared.config import RackSettings
    from shared.provider.contract import Provider

PROVIDERS: dict[str, str] = {
    "local": "shared.provider.local:LocalProvider",
    "aws": "shared.provider.aws.provider:AwsProvider",
}


def load_provider(settings: RackSettings) -> Provider:
    """The provider named by ``settings.provider``, not yet opened (nothing connects until ``__aenter__``)."""
    try:
        target = PROVIDERS[settings.provider]
    except KeyError:
        raise BadRequest(f"unknown provider: {settings.provider} (known: {', '.join(PROVIDERS)})") from None
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return cast("Provider", factory(settings))
