"""Apps and the rack's system record: thin handlers that validate, call the provider, render."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from shared.http import BAD_INPUT, ENGINE_UNAVAILABLE, error_response
from shared.logfmt import Logger
from shared.models import App, AppCreate, System
from shared.params import app_path
from shared.provider import Provider
from shared.service import provider_of

log = Logger("apps")
router = APIRouter(responses=ENGINE_UNAVAILABLE)

AppPath = app_path()
NOT_FOUND = error_response(404, "No such app")


@router.get("/apps", name="app_list", tags=["apps"], summary="List apps")
async def app_list(provider: Provider = Depends(provider_of)) -> list[App]:
    return await provider.apps.list()


@router.post(
    "/apps",
    name="app_create",
    tags=["apps"],
    status_code=201,
    summary="Create an app",
    responses={**BAD_INPUT, **error_response(409, "The app exists")},
)
async def app_create(body: AppCreate, provider: Provider = Depends(provider_of)) -> App:
    with log.measure("app.create", app=body.name):
        return await provider.apps.create(body.name)


@router.get("/apps/{app}", name="app_get", tags=["apps"], summary="Show an app", responses={**BAD_INPUT, **NOT_FOUND})
async def app_get(app: str = AppPath, provider: Provider = Depends(provider_of)) -> App:
    return await provider.apps.get(app)


@router.delete(
    "/apps/{app}",
    name="app_delete",
    tags=["apps"],
    status_code=204,
    summary="Delete an app and its processes",
    responses={**BAD_INPUT, **NOT_FOUND},
)
async def app_delete(app: str = AppPath, provider: Provider = Depends(provider_of)) -> Response:
    with log.measure("app.delete", app=app):
        await provider.apps.delete(app)
    return Response(status_code=204)


@router.get("/system", name="system_get", tags=["system"], summary="Show the rack")
async def system_get(provider: Provider = Depends(provider_of)) -> System:
    return await provider.system.get()
