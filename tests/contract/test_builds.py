"""Builds over every provider: listing, lookup and the documented errors. (A build that runs is proven per
provider: tests/test_builds_local.py on Docker; on moto, where no builder task runs, test_aws_deploy.py.)"""

from __future__ import annotations

import pytest

from shared.errors import NotFound
from shared.provider import Provider


async def test_an_app_has_no_builds_at_first(provider: Provider) -> None:
    await provider.apps.create("nobuilds")
    assert await provider.builds.list("nobuilds") == []
    assert await provider.builds.running() >= 0


async def test_build_errors(provider: Provider) -> None:
    with pytest.raises(NotFound):
        await provider.builds.list("missing")
    await provider.apps.create("builderr")
    with pytest.raises(NotFound):
        await provider.builds.get("builderr", "BNOSUCHONEX")
    with pytest.raises(NotFound):
        await anext(provider.builds.logs("builderr", "BNOSUCHONEX", follow=False))
    with pytest.raises(NotFound):  # a hostile id is only an id that no build has
        await provider.builds.get("builderr", "../../etc")
    with pytest.raises(NotFound):
        await provider.builds.get("missing", "BNOSUCHONEX")
