"""Releases, environment and formation of an app: thin handlers over the provider."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from shared.errors import BadRequest
from shared.http import BAD_INPUT, ENGINE_UNAVAILABLE, error_response
from shared.logfmt import Logger
from shared.models import App, Formation, FormationUpdate, Release, TimerStatus
from shared.names import check_env
from shared.params import app_path, env_key_path, id_path, type_path
from shared.provider import Provider
from shared.service import provider_of

log = Logger("apps")
router = APIRouter(tags=["releases"], responses=ENGINE_UNAVAILABLE)
ERRORS = {**BAD_INPUT, **error_response(404, "No such app, release or process type")}
AppName = Annotated[str, app_path()]
ReleaseId = Annotated[str, id_path("A release id.", "RNJYVQUMKKU")]
ProviderDep = Annotated[Provider, Depends(provider_of)]
UPDATING = error_response(409, "The app is already updating")


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
    description = f"env set {' '.join(sorted(env))}"
    release = await provider.releases.change_env(app, set=env, replace=replace, description=description)
    log.log("env.set", app=app, keys=",".join(sorted(env)), release=release.id)
    return release


@router.delete(
    "/apps/{app}/environment/{name}",
    name="environment_unset",
    summary="Unset an environment variable (a new release, not promoted)",
    responses=ERRORS,
)
async def environment_unset(app: AppName, name: Annotated[str, env_key_path()], provider: ProviderDep) -> Release:
    release = await provider.releases.change_env(app, unset=[name], description=f"env unset {name}")
    log.log("env.unset", app=app, key=name, release=release.id)
    return release


@router.get("/apps/{app}/formation", name="formation_get", summary="The app's process types", responses=ERRORS)
async def formation_get(app: AppName, provider: ProviderDep) -> list[Formation]:
    return await provider.formation.get(app)


@router.get(
    "/apps/{app}/timers",
    name="timer_list",
    summary="The app's timers: schedule, last run, its exit code, next run",
    responses=ERRORS,
)
async def timer_list(app: AppName, provider: ProviderDep) -> list[TimerStatus]:
    await provider.apps.get(app)
    return await provider.timers.list(app)


@router.post(
    "/apps/{app}/formation/{service}",
    name="formation_update",
    summary="Scale a process type (takes effect at once)",
    responses=ERRORS,
)
async def formation_update(
    app: AppName,
    service: Annotated[str, type_path("The process type.")],
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
