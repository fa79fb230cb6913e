"""Formation and timers over every provider: what an app without a release has, and the documented errors.
(A deployed app's formation is proven per provider: tests/test_deploy.py on Docker, test_aws_deploy.py on
moto.)"""

from __future__ import annotations

import pytest

from shared.errors import BadRequest, Conflict, NotFound
from shared.models import FormationUpdate
from shared.provider import Provider


async def test_an_app_without_a_release_has_no_formation_and_no_timers(provider: Provider) -> None:
    await provider.apps.create("fresh")
    assert await provider.formation.get("fresh") == []
    assert await provider.timers.list("fresh") == []


async def test_formation_errors(provider: Provider) -> None:
    for call in (
        provider.formation.get("missing"),
        provider.formation.scale("missing", "web", FormationUpdate(count=2)),
        provider.formation.restart("missing"),
        provider.formation.cancel("missing"),
        provider.timers.list("missing"),
    ):
        with pytest.raises(NotFound):
            await call
    await provider.apps.create("norelease")
    with pytest.raises(BadRequest, match="no release"):
        await provider.formation.scale("norelease", "web", FormationUpdate(count=2))
    with pytest.raises(Conflict):
        await provider.formation.cancel("norelease")  # no roll-out in progress
    with pytest.raises(BadRequest):
        await provider.formation.get("../etc")
    assert await provider.formation.get("norelease") == []
