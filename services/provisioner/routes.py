"""Backing services and rack params: thin handlers that validate, call the provider, render."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import Field, StringConstraints, WithJsonSchema

from services.provisioner.linking import Linker
from shared.http import BAD_INPUT, ENGINE_UNAVAILABLE, error_response
from shared.logfmt import Logger
from shared.manifest import SERVICE_NAME_PATTERN
from shared.models import APP_NAME_PATTERN, Model, Resource, ResourceEnv
from shared.params import app_path
from shared.provider import Provider
from shared.service import provider_of

log = Logger("provisioner")
router = APIRouter(tags=["services"], responses=ENGINE_UNAVAILABLE)
params_router = APIRouter(tags=["system"])

ProviderDep = Annotated[Provider, Depends(provider_of)]
ServiceName = Annotated[str, app_path("The service's name.", "postgres")]
Reveal = Annotated[bool, Query(description="Show the password in the URL instead of `***`.")]
NAME_SCHEMA = {"type": "string", "pattern": APP_NAME_PATTERN, "maxLength": 30}
TYPES = ["postgres", "mysql", "mariadb", "redis", "memcached"]
BAD = BAD_INPUT
MISSING = error_response(404, "No such service")


def linker_of(request: Request) -> Linker:
    return cast("Linker", request.app.state.linker)


LinkerDep = Annotated[Linker, Depends(linker_of)]


class ResourceCreate(Model):
    type: Annotated[str, WithJsonSchema({"type": "string", "enum": TYPES})] = Field(
        description="postgres, mysql, mariadb, redis or memcached.", examples=["postgres"]
    )
    name: Annotated[str | None, WithJsonSchema(NAME_SCHEMA)] = Field(
        None,
        description="Like an app name; the type when not given. Apps reach the service at this host name.",
        examples=["postgres"],
    )


class ResourceLink(Model):
    app: str = Field(description="The app to link the service into.", examples=["myapp"])


class ManifestResources(Model):
    resources: dict[Annotated[str, StringConstraints(pattern=SERVICE_NAME_PATTERN, max_length=63)], str] = Field(
        description="The manifest's resources: name to type."
    )


@router.post("/apps/{app}/resources", name="app_resources_declare", include_in_schema=False)
async def app_resources_declare(
    app: Annotated[str, app_path()], body: ManifestResources, linker: LinkerDep
) -> ResourceEnv:
    """For the builds service (not routed by the gateway): a build's resources ready and linked, before its
    release is made."""
    with log.measure("resource.manifest.request", app=app, resources=len(body.resources)):
        return await linker.declare(app, body.resources)


@router.get("/services", name="resource_list", summary="List backing services")
async def resource_list(provider: ProviderDep, reveal: Reveal = False) -> list[Resource]:
    return await provider.resources.list(reveal=reveal)


@router.post(
    "/services",
    name="resource_create",
    status_code=201,
    summary="Create a backing service: it is creating until it accepts connections, then running (or failed)",
    responses={**BAD, **error_response(409, "The name is taken")},
)
async def resource_create(body: ResourceCreate, provider: ProviderDep) -> Resource:
    name = body.name or body.type
    with log.measure("resource.create.request", resource=name, type=body.type):
        return await provider.resources.create(body.type, name)


@router.get("/services/{name}", name="resource_get", summary="Show a backing service", responses={**BAD, **MISSING})
async def resource_get(name: ServiceName, provider: ProviderDep, reveal: Reveal = False) -> Resource:
    return await provider.resources.get(name, reveal=reveal)


@router.delete(
    "/services/{name}",
    name="resource_delete",
    status_code=204,
    summary="Delete a backing service and its data",
    responses={**BAD, **MISSING, **error_response(409, "Linked to an app, or being created")},
)
async def resource_delete(name: ServiceName, provider: ProviderDep) -> Response:
    await provider.resources.delete(name)
    return Response(status_code=204)


@router.post(
    "/services/{name}/links",
    name="resource_link",
    summary="Link a service into an app: <NAME>_URL in its environment, through a promoted release",
    responses={
        **BAD,
        **error_response(404, "No such service or app"),
        **error_response(409, "Already linked, or the service is not running"),
        **error_response(502, "The release with the new environment failed to roll out"),
    },
)
async def resource_link(name: ServiceName, body: ResourceLink, linker: LinkerDep) -> Resource:
    with log.measure("resource.link.request", resource=name, app=body.app):
        return await linker.link(name, body.app)


@router.delete(
    "/services/{name}/links/{app}",
    name="resource_unlink",
    summary="Unlink a service from an app: <NAME>_URL leaves its environment, through a promoted release",
    responses={
        **BAD,
        **error_response(404, "No such service, or not linked to the app"),
        **error_response(502, "The release with the new environment failed to roll out"),
    },
)
async def resource_unlink(
    name: ServiceName, app: Annotated[str, app_path("The linked app.")], linker: LinkerDep
) -> Resource:
    with log.measure("resource.unlink.request", resource=name, app=app):
        return await linker.unlink(name, app)


@params_router.get("/system/params", name="system_params_get", summary="The rack's parameters")
async def system_params_get(provider: ProviderDep) -> dict[str, str]:
    return await provider.params.get()


@params_router.post(
    "/system/params",
    name="system_params_set",
    summary="Change rack parameters (an empty value restores the default)",
    responses=BAD,
)
async def system_params_set(
    provider: ProviderDep,
    values: Annotated[dict[str, str], Body(examples=[{"postgres_image": "postgres:16"}])],
) -> dict[str, str]:
    return await provider.params.set(values)
