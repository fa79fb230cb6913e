"""Builds: source upload, build records and build logs (text, or followed live over a websocket).

``POST /apps/{app}/builds`` takes the source as a ``.tgz`` body, streamed to a file under the data dir with
a size cap, extracted safely in a thread, its manifest found and parsed; only then is the archive stored as
the app's object ``sources/TOKEN.tgz`` (the provider's objects: files locally, S3 on aws) and a build of
that object recorded and started. Whatever fails before that leaves no record, no object and no files.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

from services.builds.settings import BuildsSettings
from shared import rawstream, stream
from shared.archive import extract, read_chunks, receive, remove_tree, resolve_inside
from shared.config import RackSettings
from shared.errors import BadRequest, NotFound, RackError, TooManyRequests, Unauthorized
from shared.http import BAD_INPUT, ENGINE_UNAVAILABLE, error_response
from shared.limits import Slots
from shared.logfmt import Logger
from shared.manifest import Manifest, ManifestError, find_manifest, is_compose_file, parse_manifest
from shared.models import Build, BuildOptions, BuildReport
from shared.params import app_path, id_path
from shared.provider import Provider
from shared.provider.contract import BuildReportsAPI
from shared.rawhttp import raw_extension
from shared.rawserve import serve_output
from shared.service import provider_of
from shared.websocket import accept, close, refuse

log = Logger("builds")
router = APIRouter(responses=ENGINE_UNAVAILABLE)

UPLOADS = "tmp"
"""Under the data dir: uploads being received and extracted (``upload-*``), removed at the service's start."""

SOURCES = "sources"
"""The app's objects (``ObjectsAPI``) that builds start from are ``sources/TOKEN.tgz``."""
UPLOAD_PATH = r"/apps/[^/]+/builds"
"""Where sources are uploaded (streamed to disk under the builds' own cap, not the JSON body cap)."""
AppPath = app_path()
BUILD_TOKEN_HEADER = "X-Build-Token"
BuildPath = id_path("The build's id.", "BAPRZPQKXNE")
NOT_FOUND = error_response(404, "No such app or build")
TOO_LARGE = error_response(413, "The source is too large")

SOURCE_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "The source directory as a gzipped tar (`.dockerignore` already applied by the client), sent as "
            "raw bytes (any Content-Type; the CLI sends `application/gzip`)."
        ),
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}

LOGS_SOCKET = {
    "description": (
        "The build's log as text. With a websocket upgrade (subprotocol `v1.stream.rack`), the log so far "
        "then its output live on channel 1 until the build ends, then a status message on channel 3: "
        '`{"exit_code": 0}` for a complete build, `{"error": "..."}` for a failed one.'
    ),
    "responses": {
        "101": {"description": "Switched to a websocket (`Upgrade: websocket`, subprotocol `v1.stream.rack`)"}
    },
}


def builds_settings_of(request: Request) -> BuildsSettings:
    settings = getattr(request.app.state, "builds_settings", None)
    return settings if isinstance(settings, BuildsSettings) else BuildsSettings()


def uploads_of(request: Request) -> Slots:
    """The service's cap on uploads received at once (a default one for an app made without it)."""
    slots = getattr(request.app.state, "uploads", None)
    if not isinstance(slots, Slots):
        limit = builds_settings_of(request).max_uploads
        slots = request.app.state.uploads = Slots("source uploads", limit, "RACK_BUILDS_MAX_UPLOADS")
    return slots


def uploads_dir(request: Request) -> Path:
    settings = cast("RackSettings", request.app.state.settings)
    return settings.data_dir / UPLOADS


def check_manifest_name(name: str) -> None:
    if len(name) > 255 or "\x00" in name or name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
        raise BadRequest(f"manifest: must be a path inside the source, got {name!r}")


def load_manifest(context: Path, name: str, env: Mapping[str, str] | None = None) -> Manifest:
    """Find and parse the manifest of the extracted source at ``context``, and check that every build it
    asks for has its directory and Dockerfile in the source; ``${VAR}`` is filled from ``env`` (the app's
    environment). Blocking: run in a thread."""
    path = find_manifest(context, name or None)
    filename = path.relative_to(context).as_posix()
    if resolve_inside(context, filename) is None:
        raise ManifestError(f"{filename}: must be a file inside the source")
    manifest = parse_manifest(path.read_text(encoding="utf-8", errors="replace"), filename, env)
    compose = is_compose_file(filename)
    for service_name, service in manifest.services.items():
        spec = service.build
        if spec is None:
            continue
        key = f"services.{service_name}.build"
        directory = posixpath.normpath(spec.path)
        resolved = resolve_inside(context, directory)
        if resolved is None or not (context / resolved).is_dir():
            where = key if compose else f"{key}.path"
            raise ManifestError(f"{filename}: {where}: {spec.path} is not a directory in the source")
        dockerfile = resolve_inside(context, posixpath.join(directory, spec.manifest))
        if dockerfile is None or not (context / dockerfile).is_file():
            where = f"services.{service_name}.dockerfile" if compose else f"{key}.manifest"
            raise ManifestError(f"{filename}: {where}: {spec.manifest} not found in {spec.path}")
    return manifest


@router.post(
    "/apps/{app}/builds",
    name="build_create",
    tags=["builds"],
    status_code=201,
    summary="Upload source and start a build",
    description=(
        "The body is the source as a `.tgz`. The build starts in the background: follow its output at "
        "`/apps/{app}/builds/{id}/logs` (websocket). A complete build makes a release (not promoted)."
    ),
    responses={
        **BAD_INPUT,
        **NOT_FOUND,
        **TOO_LARGE,
        **error_response(429, "Too many uploads or builds at once (RACK_BUILDS_MAX_UPLOADS, RACK_BUILDS_MAX_BUILDS)"),
    },
    openapi_extra=SOURCE_BODY,
)
async def build_create(
    request: Request,
    app: str = AppPath,
    description: str = Query("", max_length=1000, description="What this build is, shown by `convox builds`."),
    manifest: str = Query("", max_length=255, description="The manifest's path in the source (default convox.yml)."),
    no_cache: bool = Query(False, description="Build without Docker's layer cache."),
    provider: Provider = Depends(provider_of),
    limits: BuildsSettings = Depends(builds_settings_of),
) -> Build:
    await provider.apps.get(app)  # 404 before reading a byte of the body
    check_manifest_name(manifest)
    if await provider.builds.running() >= limits.max_builds:  # 429 before reading a byte, too
        raise TooManyRequests(
            f"too many builds running at once (the limit is {limits.max_builds}, setting RACK_BUILDS_MAX_BUILDS): "
            "wait for one to end"
        )
    with uploads_of(request).hold():
        return await _build_create(request, app, manifest, description, no_cache, provider, limits)


async def _build_create(
    request: Request,
    app: str,
    manifest: str,
    description: str,
    no_cache: bool,
    provider: Provider,
    limits: BuildsSettings,
) -> Build:
    options = BuildOptions(description=description, manifest=manifest, no_cache=no_cache)
    uploads = uploads_dir(request)
    await asyncio.to_thread(uploads.mkdir, parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_hex(8)
    archive = uploads / f"upload-{token}.tgz"
    context = uploads / f"upload-{token}"
    key = f"{SOURCES}/{token}.tgz"
    with log.measure("build.upload", app=app) as fields:
        try:
            size = await receive(request.stream(), archive, limits.max_source_size)
            fields["bytes"] = size
            if size == 0:
                raise BadRequest("the source archive is empty")
            fields["entries"] = await asyncio.to_thread(
                extract, archive, context, max_size=limits.max_extracted_size, max_members=limits.max_entries
            )
            env = await provider.releases.environment(app)
            parsed = await asyncio.to_thread(load_manifest, context, manifest, env)
            await provider.objects.store(app, key, read_chunks(archive), max_size=limits.max_source_size)
        finally:
            await asyncio.to_thread(remove_tree, archive)
            await asyncio.to_thread(remove_tree, context)
    try:
        build = await provider.builds.create(app, key, parsed, options)
    except BaseException:
        with contextlib.suppress(Exception):
            await provider.objects.delete(app, key)
        raise
    log.log("build.create", app=app, build=build.id)
    return build


@router.get("/apps/{app}/builds", name="build_list", tags=["builds"], summary="List builds, newest first")
async def build_list(
    app: str = AppPath,
    limit: int = Query(20, ge=1, le=1000, description="At most this many."),
    provider: Provider = Depends(provider_of),
) -> list[Build]:
    return await provider.builds.list(app, limit)


@router.get(
    "/apps/{app}/builds/{build_id}",
    name="build_get",
    tags=["builds"],
    summary="Show a build",
    responses={**BAD_INPUT, **NOT_FOUND},
)
async def build_get(app: str = AppPath, build_id: str = BuildPath, provider: Provider = Depends(provider_of)) -> Build:
    return await provider.builds.get(app, build_id)


@router.post(
    "/apps/{app}/builds/{build_id}/report",
    name="build_report",
    tags=["builds"],
    summary="The builder's report: the images it pushed, or its error (the build's own token only)",
    description=(
        "Called by a builder that runs outside the rack (the aws provider's builder task) at its end, with the "
        "per-build token from its environment in `X-Build-Token` (the rack password is never given to a "
        "builder, and this route takes no other credential). A report with images makes the build's release."
    ),
    responses={
        **BAD_INPUT,
        **error_response(401, "No build token, or not this build's"),
        **error_response(404, "No such app or build, or this rack's builds run in the rack and do not report"),
    },
    openapi_extra={"security": [{"buildToken": []}]},
)
async def build_report(
    request: Request,
    report: BuildReport,
    app: str = AppPath,
    build_id: str = BuildPath,
    provider: Provider = Depends(provider_of),
) -> Build:
    token = request.headers.get(BUILD_TOKEN_HEADER, "")
    if not token or len(token) > 200:
        raise Unauthorized(f"build token required ({BUILD_TOKEN_HEADER})")
    builds = provider.builds
    if not isinstance(builds, BuildReportsAPI):
        raise NotFound(f"builds of this rack ({provider.name}) run in the rack: there is nothing to report")
    build = await builds.report(app, build_id, token, report)
    log.log("build.report", app=app, build=build_id, status=build.status)
    return build


@router.get(
    "/apps/{app}/builds/{build_id}/logs",
    name="build_logs",
    tags=["builds"],
    summary="A build's log (or follow it live over a websocket)",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The log so far", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **NOT_FOUND,
    },
    openapi_extra=LOGS_SOCKET,
)
async def build_logs(
    request: Request, app: str = AppPath, build_id: str = BuildPath, provider: Provider = Depends(provider_of)
) -> Response:
    await provider.builds.get(app, build_id)
    if rawstream.wants_raw(request.headers):  # followed over the rack's socket, as the CLI there does
        extension = raw_extension(request.scope)

        async def status() -> bytes:
            exit_code, error = await ended(provider, app, build_id)
            return rawstream.status_frame(exit_code=exit_code, error=error)

        await serve_output(extension, provider.builds.logs(app, build_id, follow=True), status, log)
        return Response(status_code=101)  # not written: the connection is the stream's
    return StreamingResponse(provider.builds.logs(app, build_id, follow=False), media_type="text/plain")


async def ended(provider: Provider, app: str, build_id: str) -> tuple[int | None, str | None]:
    """A followed build's status once its log has ended: exit code 0 when complete, else the error."""
    build = await provider.builds.get(app, build_id)
    if build.status == "complete":
        return 0, None
    if build.status == "failed":
        return None, build.error or "build failed"
    return None, f"build is {build.status}"


@router.websocket("/apps/{app}/builds/{build_id}/logs")
async def build_logs_socket(websocket: WebSocket, app: str, build_id: str) -> None:
    """The log so far, then live output until the build ends, then its status (see ``shared.stream``)."""
    provider = provider_of(websocket)
    try:
        await provider.builds.get(app, build_id)
    except RackError as exc:
        await refuse(websocket, exc)
        return
    await accept(websocket)

    async def send_log() -> None:
        async for chunk in provider.builds.logs(app, build_id, follow=True):
            await websocket.send_bytes(stream.encode(stream.Channel.STDOUT, chunk))
        exit_code, error = await ended(provider, app, build_id)
        await websocket.send_bytes(stream.status(exit_code=exit_code, error=error))

    async def watch_client() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

    sender = asyncio.create_task(send_log())
    watcher = asyncio.create_task(watch_client())
    try:
        done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        failure = sender.exception() if sender in done else None
        if failure is not None and not isinstance(failure, WebSocketDisconnect):
            message = failure.message if isinstance(failure, RackError) else "internal error"
            if not isinstance(failure, RackError):
                log.error("build.logs", app=app, build=build_id, error=type(failure).__name__)
            with contextlib.suppress(Exception):
                await websocket.send_bytes(stream.status(error=message))
    finally:
        for task in (sender, watcher):
            task.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
    await close(websocket)
