"""Apps and the rack's system record: thin handlers that validate, call the provider, render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from shared.errors import BadRequest
from shared.http import BAD_INPUT, ENGINE_UNAVAILABLE, error_response
from shared.logfmt import Logger
from shared.models import App, AppCreate, ImageStatus, System
from shared.names import IMAGE_PATTERN, is_image
from shared.params import app_path
from shared.provider import Provider
from shared.service import provider_of

log = Logger("apps")
router = APIRouter(responses=ENGINE_UNAVAILABLE)

AppPath = app_path()
NOT_FOUND = error_response(404, "No such app")
MAX_IMAGES = 8


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


MAX_SETTLED = 30.0
"""Seconds a ``GET /apps/{app}?settled=`` may wait for a roll-out's end."""


@router.get("/apps/{app}", name="app_get", tags=["apps"], summary="Show an app", responses={**BAD_INPUT, **NOT_FOUND})
async def app_get(
    app: str = AppPath,
    settled: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_SETTLED,
            description="Answer once no roll-out of the app is in progress, waiting at most this many seconds "
            "(then the app as it is, still `updating`); 0, the default, answers at once. `convox deploy` waits "
            "for its roll-out so, instead of polling.",
        ),
    ] = 0,
    provider: Provider = Depends(provider_of),
) -> App:
    if settled > 0:
        return await provider.releases.settled(app, settled)
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


@router.get(
    "/system/images",
    name="system_images",
    tags=["system"],
    summary="Whether builds can start from images",
    description="For each `image` asked (1 to 8): whether the engine that builds has it, and if not, whether a "
    "registry answers for it within a few seconds (the answer is remembered for five minutes). `convox init` "
    "asks this to choose between the official base images and the offline ones (`make images`).",
    responses=BAD_INPUT,
)
async def system_images(
    image: Annotated[
        list[str],
        Query(description=f"An image reference, such as `python:3.12-slim` (pattern `{IMAGE_PATTERN}`)."),
    ],
    provider: Provider = Depends(provider_of),
) -> list[ImageStatus]:
    if not 1 <= len(image) <= MAX_IMAGES:
        raise BadRequest(f"ask for 1 to {MAX_IMAGES} images, not {len(image)}")
    for name in image:
        if not is_image(name):
            raise BadRequest(f"invalid image reference: {name[:300]!r}")
    with log.measure("system.images", count=len(image)):
        return await provider.system.images(list(dict.fromkeys(image)))
