"""Provider implementations by name, one subpackage each (the way uvicorn registers its loops).

Each entry is a typed factory, so mypy checks that every implementation fits :class:`Provider`; the
implementation's package is imported only when it is chosen (the CLI never imports aiodocker or aioboto3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.errors import BadRequest

if TYPE_CHECKING:
    from shared.config import RackSettings
    from shared.provider.contract import Provider


def _local(settings: RackSettings) -> Provider:
    from shared.provider.local import LocalProvider

    return LocalProvider(settings)


def _aws(settings: RackSettings) -> Provider:
    from shared.provider.aws.provider import AwsProvider

    return AwsProvider(settings)


PROVIDERS: dict[str, Callable[[RackSettings], Provider]] = {"local": _local, "aws": _aws}


def load_provider(settings: RackSettings) -> Provider:
    """The provider named by ``settings.provider``, not yet opened (nothing connects until ``__aenter__``)."""
    try:
        factory = PROVIDERS[settings.provider]
    except KeyError:
        raise BadRequest(f"unknown provider: {settings.provider} (known: {', '.join(PROVIDERS)})") from None
    return factory(settings)
