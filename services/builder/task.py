"""One build, from the task's environment to its report.

The environment (the rack's ``AwsBuilds._start`` sets it: the task definition's, then this task's overrides):

``BUILD_ID``, ``APP``, ``RACK``
    what is built
``BUILD_SERVICES``
    JSON ``{"web": {"path": ".", "dockerfile": "Dockerfile", "args": {...}}, ...}``: the process types to
    build, from the manifest the rack parsed (those that run an ``image:`` are not in it)
``SOURCE_URL``
    the source tarball (a presigned S3 GET: the task needs no S3 rights and the image no AWS SDK)
``BUILD_PUSH``
    ``HOST/REPOSITORY:{service}.{build}``: where each image is pushed (``{service}``, ``{build}`` filled in)
``BUILD_AUTH``
    the registry's authorisation as ECR's GetAuthorizationToken gives it: base64 of ``USER:PASSWORD``
``BUILD_NO_CACHE``
    ``true`` to build without the engine's cache
``RACK_URL``, ``BUILD_TOKEN``
    where and with what the builder reports (``POST RACK_URL/apps/APP/builds/ID/report``, ``X-Build-Token``)
``RACK_CA``
    the PEM certificate the rack's URL must present (its self-signed certificate: a pin, the host name is not
    checked); without it, the system's CAs and the host name. The builder checks it before it builds and
    refuses to report to a server that does not present it.
``DOCKER_HOST``
    the engine's socket (``unix:///var/run/docker.sock``: the instance's, mounted into the task)
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import posixpath
import shutil
import ssl
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.builder.engine import Engine, EngineError, registry_auth
from shared.archive import extract, pack, resolve_inside
from shared.errors import RackError

CHUNK = 1024 * 1024
MAX_SOURCE = 4 << 30
"""Bytes the source may expand to (the rack caps uploads well below)."""
REPORT_ATTEMPTS = 8
"""Tries of the report while the rack answers 5xx or not at all (a restart): back-off 1, 2, 4 ... 30 s."""


class BuildFailed(Exception):
    """The build cannot go on: the message is reported to the rack and printed."""


class Untrusted(Exception):
    """The server at RACK_URL is not the rack the task was told to trust: nothing is sent to it."""


@dataclass
class Service:
    name: str
    path: str = "."
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    build: str
    app: str
    services: list[Service]
    source_url: str
    push: str
    auth: str
    no_cache: bool
    rack_url: str
    token: str
    ca: str
    docker_host: str

    def image(self, service: str) -> str:
        return self.push.replace("{service}", service).replace("{build}", self.build.lower())


def plan_from(env: Mapping[str, str]) -> Plan:
    """The build the environment describes; a missing or malformed variable is a :class:`BuildFailed`."""
    missing = [k for k in ("BUILD_ID", "APP", "SOURCE_URL", "BUILD_PUSH", "RACK_URL", "BUILD_TOKEN") if not env.get(k)]
    if missing:
        raise BuildFailed(f"the task's environment lacks {', '.join(missing)}")
    try:
        raw = json.loads(env.get("BUILD_SERVICES") or "{}")
        services = [
            Service(
                name, str(spec.get("path", ".")), str(spec.get("dockerfile", "Dockerfile")), dict(spec.get("args", {}))
            )
            for name, spec in sorted(raw.items())
        ]
    except (ValueError, AttributeError, TypeError) as exc:
        raise BuildFailed(f"BUILD_SERVICES is not a JSON object of process types ({exc})") from None
    push = env["BUILD_PUSH"]
    if "{service}" not in push or push.startswith(("http://", "https://")):
        raise BuildFailed("BUILD_PUSH must be HOST/REPOSITORY:TAG with {service} in it")
    return Plan(
        build=env["BUILD_ID"],
        app=env["APP"],
        services=services,
        source_url=env["SOURCE_URL"],
        push=push,
        auth=env.get("BUILD_AUTH", ""),
        no_cache=env.get("BUILD_NO_CACHE", "false").lower() == "true",
        rack_url=env["RACK_URL"].rstrip("/"),
        token=env["BUILD_TOKEN"],
        ca=env.get("RACK_CA", ""),
        docker_host=env.get("DOCKER_HOST", ""),
    )


def rack_context(ca: str) -> ssl.SSLContext:
    """Trust in the rack: exactly the certificate ``ca`` (a pin, as the CLI pins it: no host name check, the
    rack is reached by whatever address the cluster has for it), or without one the system's CAs."""
    if not ca:
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=ca)
    except ssl.SSLError as exc:
        raise Untrusted(f"RACK_CA is not a PEM certificate ({exc.reason})") from None
    return context


def check_rack(url: str, context: ssl.SSLContext) -> None:
    """A TLS handshake with the rack: :class:`Untrusted` when it does not present the trusted certificate."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise Untrusted(f"RACK_URL must be https://, not {parts.scheme}://")
    connection = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=30, context=context)
    try:
        connection.connect()
    except ssl.SSLCertVerificationError as exc:
        raise Untrusted(f"the server at {url} is not the rack this build trusts ({exc.verify_message})") from None
    except ssl.SSLError as exc:
        raise Untrusted(f"no TLS with {url} ({exc.reason})") from None
    except OSError:
        pass  # not reachable now: the report retries (and verifies again)
    finally:
        connection.close()


def download(url: str, out: Path) -> int:
    """The source at ``url`` into ``out``; returns its size. The presigned URL itself is never printed."""
    try:
        with urllib.request.urlopen(url, timeout=300) as response, out.open("wb") as handle:
            shutil.copyfileobj(response, handle, CHUNK)
    except urllib.error.HTTPError as exc:
        raise BuildFailed(f"cannot download the source: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BuildFailed(f"cannot download the source: {getattr(exc, 'reason', exc)}") from None
    return out.stat().st_size


def auth_header(auth: str, image: str) -> str:
    """``X-Registry-Auth`` for pushing ``image`` with ``BUILD_AUTH`` (base64 ``USER:PASSWORD``; empty: none)."""
    server = image.split("/", 1)[0]
    if not auth:
        return registry_auth("", "", server)
    try:
        user, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeError):
        raise BuildFailed("BUILD_AUTH is not base64 of USER:PASSWORD") from None
    return registry_auth(user, password, server)


def context_of(source: Path, service: Service) -> Path:
    relative = resolve_inside(source, posixpath.normpath(service.path))
    if relative is None or service.path.startswith("/"):
        raise BuildFailed(f"{service.name}: build path {service.path!r} leads out of the source")
    directory = source / relative if relative else source
    if not directory.is_dir():
        raise BuildFailed(f"{service.name}: build path {service.path!r} is not a directory of the source")
    return directory


def build_all(plan: Plan, engine: Engine, work: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Download, build and push every process type; returns ``{service: image}``."""
    if not plan.services:
        raise BuildFailed("the manifest builds no process type")
    archive = work / "source.tgz"
    size = download(plan.source_url, archive)
    source = work / "source"
    try:
        extract(archive, source, max_size=MAX_SOURCE)
    except RackError as exc:
        raise BuildFailed(f"the source: {exc.message}") from None
    archive.unlink()
    say(f"Source: {size} bytes\n")
    images: dict[str, str] = {}
    for service in plan.services:
        image = plan.image(service.name)
        directory = context_of(source, service)
        say(f"Building {service.name} ({service.path}, {service.dockerfile}) as {image}\n")
        context = work / f"context-{service.name}.tar"
        with context.open("wb") as handle:
            pack(directory, handle, compress=False, keep=[service.dockerfile, ".dockerignore"])
        try:
            engine.build(context, image, service.dockerfile, service.args, plan.no_cache, say)
        except EngineError as exc:
            raise BuildFailed(f"{service.name}: {exc}") from None
        finally:
            context.unlink()
        images[service.name] = image
    for name, image in images.items():
        say(f"Pushing {image}\n")
        try:
            digest = engine.push(image, auth_header(plan.auth, image), say)
        except EngineError as exc:
            raise BuildFailed(f"{name}: cannot push {image}: {exc}") from None
        say(f"Pushed {image} ({digest})\n")
    return images


def report(plan: Plan, context: ssl.SSLContext, body: dict[str, Any], say: Callable[[str], None]) -> None:
    """``POST RACK_URL/apps/APP/builds/ID/report``: retried while the rack is down or answers 5xx; a 4xx, or
    a server that is not the trusted rack, ends it."""
    url = f"{plan.rack_url}/apps/{urllib.parse.quote(plan.app)}/builds/{urllib.parse.quote(plan.build)}/report"
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Build-Token": plan.token}
    delay = 1.0
    for attempt in range(1, REPORT_ATTEMPTS + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                response.read()
                return
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")[:500]
            if exc.code < 500 or attempt == REPORT_ATTEMPTS:
                raise BuildFailed(f"the rack refused the report: HTTP {exc.code} {text}") from None
            problem = f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise Untrusted(
                    f"the server at {plan.rack_url} is not the rack this build trusts ({exc.reason.verify_message})"
                ) from None
            if isinstance(exc.reason, ssl.SSLError):
                raise Untrusted(f"no TLS with {plan.rack_url} ({exc.reason.reason})") from None
            if attempt == REPORT_ATTEMPTS:
                raise BuildFailed(f"cannot reach the rack: {exc.reason}") from None
            problem = str(exc.reason)
        say(f"The rack did not take the report ({problem}); again in {delay:.0f}s\n")
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


def write(text: str) -> None:
    """The build's output: stdout, which the task's awslogs driver ships to the build's log stream."""
    sys.stdout.write(text)
    sys.stdout.flush()


def run(env: Mapping[str, str], say: Callable[[str], None] = write) -> int:
    """The whole build; the task's exit code (0: built, pushed and reported)."""
    try:
        plan = plan_from(env)
    except BuildFailed as exc:
        say(f"ERROR: {exc}\n")
        return 2
    try:
        context = rack_context(plan.ca)
        check_rack(plan.rack_url, context)
    except Untrusted as exc:
        say(f"ERROR: {exc}: not building, not reporting\n")
        return 3
    work = Path(tempfile.mkdtemp(prefix="convox-build-"))
    outcome: dict[str, Any]
    try:
        engine = Engine(plan.docker_host)
        say(f"Build {plan.build} of {plan.app} on Docker Engine {engine.version()}\n")
        outcome = {"images": build_all(plan, engine, work, say)}
    except (BuildFailed, EngineError) as exc:
        outcome = {"error": str(exc)[:4000]}
        say(f"ERROR: {exc}\n")
    except OSError as exc:
        outcome = {"error": f"the builder cannot go on: {exc}"[:4000]}
        say(f"ERROR: {outcome['error']}\n")
    except Exception as exc:  # a fault of the builder's own: still reported, so the build does not hang
        say(traceback.format_exc())
        outcome = {"error": f"the builder failed ({type(exc).__name__}: {exc})"[:4000]}
        say(f"ERROR: {outcome['error']}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        report(plan, context, outcome, say)
    except Untrusted as exc:
        say(f"ERROR: {exc}: not reporting\n")
        return 3
    except BuildFailed as exc:
        say(f"ERROR: {exc}\n")
        return 1
    say("Reported to the rack\n")
    return 1 if "error" in outcome else 0
