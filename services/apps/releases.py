"""Releases, environment and formation of an app: thin handlers over the provider."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query

from shared.errors import BadRequest, NotFound
from shared.http import BAD_INPUT, error_response
from shared.logfmt import Logger
from shared.models import App, Formation, FormationUpdate, Release
from shared.provider import Provider
from shared.service import provider_of

log = Logger("apps")
router = APIRouter(tags=["releases"])
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
ERRORS = {**BAD_INPUT, **error_response(404, "No such app, release or process type")}
AppName = Annotated[str, Path(description="The app's name.", examples=["myapp"])]
ReleaseId = Annotated[str, Path(description="A release id.", examples=["RNJYVQUMKKU"])]
ProviderDep = Annotated[Provider, Depends(provider_of)]
UPDATING = error_response(409, "The app is already updating")


def check_env(env: dict[str, str]) -> None:
    bad = sorted(key for key in env if not ENV_KEY.match(key))
    if bad:
        raise BadRequest(f"invalid environment variable name: {bad[0]!r} (letters, digits and _, not first a digit)")


@router.get("/apps/{app}/releases", name="release_list", summary="List an app's releases", responses=ERRORS)
async def release_list(
    app: AppName, provider: ProviderDep, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> list[Release]:
    return await provider.releases.list(app, limit)


@router.get("/apps/{app}/releases/{release}", name="release_get", summary="Show a release", responses=ERRORS)
async def release_get(app: AppName, release: ReleaseId, provider: ProviderDep) -> Release:
    return await provider.releases.get(app, release)


@router.post(
    "/apps/{app}/releases/{release}/promote",
    name="release_promote",
    summary="Roll a release out (the app is `updating` until `running` or `failed`)",
    responses={**ERRORS, **UPDATING},
)
async def release_promote(app: AppName, release: ReleaseId, provider: ProviderDep) -> App:
    with log.measure("release.promote.start", app=app, release=release):
        return await provider.releases.promote(app, release)


@router.post(
    "/apps/{app}/releases/{release}/rollback",
    name="release_rollback",
    summary="Make a new release copied from an old one and promote it",
    responses={**ERRORS, **UPDATING},
)
async def release_rollback(app: AppName, release: ReleaseId, provider: ProviderDep) -> Release:
    old = await provider.releases.get(app, release)
    if not old.build:
        raise BadRequest(f"release {release} has no build to roll back to")
    new = await provider.releases.create(app, build=old.build, env=old.env, description=f"rollback to {release}")
    await provider.releases.promote(app, new.id)
    log.log("release.rollback", app=app, release=new.id, to=release)
    return new


@router.get("/apps/{app}/environment", name="environment_get", summary="The app's environment", responses=ERRORS)
async def environment_get(app: AppName, provider: ProviderDep) -> dict[str, str]:
    return await provider.releases.environment(app)


@router.post(
    "/apps/{app}/environment",
    name="environment_set",
    summary="Set environment variables (a new release, not promoted)",
    responses=ERRORS,
)
async def environment_set(
    app: AppName,
    provider: ProviderDep,
    env: Annotated[dict[str, str], Body(examples=[{"GREETING": "hello"}])],
    replace: Annotated[bool, Query(description="Replace the whole environment instead of merging.")] = False,
) -> Release:
    check_env(env)
    current = {} if replace else await provider.releases.environment(app)
    description = f"env set {' '.join(sorted(env))}"
    release = await provider.releases.create(app, env={**current, **env}, description=description)
    log.log("env.set", app=app, keys=",".join(sorted(env)), release=release.id)
    return release


@router.delete(
    "/apps/{app}/environment/{name}",
    name="environment_unset",
    summary="Unset an environment variable (a new release, not promoted)",
    responses=ERRORS,
)
async def environment_unset(
    app: AppName, name: Annotated[str, Path(description="The variable.")], provider: ProviderDep
) -> Release:
    current = await provider.releases.environment(app)
    if name not in current:
        raise NotFound(f"no such environment variable: {name}")
    del current[name]
    release = await provider.releases.create(app, env=current, description=f"env unset {name}")
    log.log("env.unset", app=app, key=name, release=release.id)
    return release


@router.get("/apps/{app}/formation", name="formation_get", summary="The app's process types", responses=ERRORS)
async def formation_get(app: AppName, provider: ProviderDep) -> list[Formation]:
    return await provider.formation.get(app)


@router.post(
    "/apps/{app}/formation/{service}",
    name="formation_update",
    summary="Scale a process type (takes effect at once)",
    responses=ERRORS,
)
async def formation_update(
    app: AppName,
    service: Annotated[str, Path(description="The process type.", examples=["web"])],
    update: FormationUpdate,
    provider: ProviderDep,
) -> Formation:
    return await provider.formation.scale(app, service, update)


@router.post(
    "/apps/{app}/restart",
    name="app_restart",
    summary="Restart the app's processes, rolling (of one process type with `service`)",
    responses={**ERRORS, **error_response(409, "The app is updating")},
)
async def app_restart(
    app: AppName,
    provider: ProviderDep,
    service: Annotated[str | None, Query(description="Only this process type.", examples=["web"])] = None,
) -> list[Formation]:
    return await provider.formation.restart(app, service)


@router.post(
    "/apps/{app}/cancel",
    name="app_cancel",
    summary="Cancel the roll-out in progress (the release that was serving goes on serving)",
    responses={**ERRORS, **error_response(409, "No roll-out in progress, or it is already switching")},
)
async def app_cancel(app: AppName, provider: ProviderDep) -> App:
    return await provider.formation.cancel(app)
