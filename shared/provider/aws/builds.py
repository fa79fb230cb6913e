"""Builds on AWS: items in ``<prefix>-builds``, sources in the settings bucket, a builder task on ECS.

A build's source is an object of the app (:mod:`shared.provider.aws.objects`, ``apps/APP/objects/KEY``,
stored by the builds service); the build is then a RunTask of the rack's builder image (``make images``:
rack-local/builder, the program services/builder) on the instance's network with the instance's Docker
socket mounted, the build's id and source as its environment, writing its output to the stream
``build/build/TASKID`` of the app's log group. The task also gets, as RunTask overrides (never in the shared
task definition), ``BUILD_TOKEN`` (a token for this build only; the rack keeps its hash), ``RACK_URL`` and
``RACK_CA`` (the certificate the builder pins there), a presigned GET of the source object (``SOURCE_URL``;
``SOURCE_BUCKET`` and ``SOURCE_KEY`` name it too), what to build (``BUILD_SERVICES``) and where to push with
what (``BUILD_PUSH``, ``BUILD_AUTH`` from ECR's GetAuthorizationToken): it reports its end with
``POST RACK_URL/apps/APP/builds/ID/report`` and ``X-Build-Token`` (:meth:`AwsBuilds.report`, then
:meth:`AwsBuilds.finish`: the images it pushed to ECR, or its error), which makes the release. The rack
password is never given to a builder. A builder task that stops without reporting fails its build: the
owner of the background work runs :meth:`AwsBuilds.expire` (and :meth:`AwsBuilds.sweep` at its start). On
moto no task runs: the no-engine tests play the builder (tests/aws/builder_double.py, tests/contract);
tests/aws_engine runs the real builder image.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.errors import BadRequest, NotFound, RackError, Unauthorized
from shared.ids import build_id
from shared.logfmt import Logger
from shared.manifest import Manifest
from shared.models import Build, BuildOptions, BuildReport, ResourceEnv
from shared.provider.aws.apps import AwsApps, log_group
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.formation import AwsFormation
from shared.provider.aws.objects import AwsObjects
from shared.provider.aws.releases import AwsReleases
from shared.provider.aws.state import Item, State, now_iso, parse_iso, to_item
from shared.provider.contract import ResourceHook

log = Logger("builds")
NO_BUILDER = "the rack has no builder image (rack parameter BuildImage, setting RACK_AWS_BUILD_IMAGE)"
RESTARTED = "the builder stopped before the build ended"
EXPIRE_INTERVAL = 10.0
"""Seconds between the owner's looks at the builder tasks ECS has stopped (ECS's API calls are free)."""
NO_TASK_SECONDS = 600.0
"""A build still without a builder task this long after it was made never gets one (its start was cut off)."""
NO_FARGATE = (
    "builds need EC2 container instances (the builder drives the instance's Docker Engine): LaunchType is FARGATE"
)
DOCKER_SOCKET = "/var/run/docker.sock"
SOURCE_URL_TTL = 6 * 3600
"""Seconds the builder's presigned URL of the source is good for (a task may wait for a place to run)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def log_stream(build: str) -> str:
    return f"build/{build}"


def to_build(item: Item) -> Build:
    return Build(
        id=item["id"],
        app=item["app"],
        status=item["status"],
        description=item.get("description", ""),
        manifest=item.get("manifest", ""),
        release=item.get("release", ""),
        started=parse_iso(item.get("started", "")),
        ended=parse_iso(item.get("ended", "")),
        error=item.get("error", ""),
    )


def read_certificate(path: Path | None) -> str:
    """The PEM at ``path``, or empty when there is none (blocking: run it in a thread)."""
    try:
        return path.read_text() if path else ""
    except FileNotFoundError:
        return ""


class AwsBuilds:
    def __init__(
        self,
        state: State,
        clients: Clients,
        apps: AwsApps,
        releases: AwsReleases,
        formation: AwsFormation,
        rack: str,
        build_image: str,
        report_url: str = "",
        objects: AwsObjects | None = None,
        *,
        report_ca: str = "",
        own_certificate: Path | None = None,
        registry: str = "",
    ) -> None:
        self.state = state
        self.objects = objects or AwsObjects(state, apps)
        self.clients = clients
        self.apps = apps
        self.releases = releases
        self._resources: ResourceHook | None = None
        self.formation = formation
        self.rack = rack
        self.build_image = build_image
        self.report_url = report_url
        """Where the builder task reaches the rack to report (its API's address as seen from the cluster)."""
        self.report_ca = report_ca
        """The PEM certificate the builder must find at ``report_url``; else the one at ``own_certificate``
        (the rack's own, when the builder reaches the rack itself)."""
        self.own_certificate = own_certificate
        self.registry = registry
        """HOST[:PORT] builds push to instead of ECR's (``RACK_AWS_BUILD_REGISTRY``)."""
        self._checked: set[str] = set()
        """The stopped builder tasks :meth:`expire_once` has looked at (a stopped task does not change)."""

    async def _item(self, app: str, build: str) -> Item:
        await self.apps.item(app)
        item = await self.state.get_item(self.state.builds_table, {"id": build}, f"no such build: {build}")
        if item.get("app") != app:
            raise NotFound(f"no such build: {build}")
        return item

    async def _set(self, build: str, **values: Any) -> None:
        db = await self.state.dynamodb()
        names = {f"#{k}": k for k in values}
        expression = "SET " + ", ".join(f"#{k} = :{k}" for k in values)
        with translated(f"no such build: {build}"):
            await db.update_item(
                TableName=self.state.builds_table,
                Key=to_item({"id": build}),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(id)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item({f":{k}": v for k, v in values.items()}),
            )

    async def create(self, app: str, source: str, manifest: Manifest, options: BuildOptions) -> Build:
        """Record the build of the app's object ``source`` and start the builder task, which reads the object
        (``SOURCE_BUCKET``, ``SOURCE_KEY``); the object stays until the app goes."""
        source_key = await self.objects.s3_key(app, source)
        if not await self.objects.exists(app, source):
            raise NotFound(f"no such object: {source}")
        build = build_id()
        item = {
            "id": build,
            "app": app,
            "status": "created",
            "description": options.description,
            "manifest": manifest.model_dump_json(),
            "created": now_iso(),
            "release": "",
            "source": source_key,
        }
        db = await self.state.dynamodb()
        with translated(f"build already exists: {build}"):
            await db.put_item(
                TableName=self.state.builds_table, Item=to_item(item), ConditionExpression="attribute_not_exists(id)"
            )
        await self._start(app, build, source_key, manifest, options)
        log.log("build.create", app=app, build=build, services=len(manifest.services))
        return await self.get(app, build)

    async def _start(self, app: str, build: str, source_key: str, manifest: Manifest, options: BuildOptions) -> None:
        if not self.build_image:
            await self._set(build, status="failed", error=NO_BUILDER, ended=now_iso())
            return
        if self.formation.settings.launch_type == "FARGATE":
            await self._set(build, status="failed", error=NO_FARGATE, ended=now_iso())
            return
        ecs = await self.clients.get("ecs")
        # The builder's one credential: good for reporting this build only, kept here as a hash, and given to
        # the task as an override (never in the shared task definition, never the rack password).
        token = secrets.token_urlsafe(32)
        await self._set(build, token_hash=token_hash(token))
        try:
            secret_env = {
                "BUILD_TOKEN": token,
                "RACK_URL": self.report_url,
                **await self._builder_access(app, build, source_key, manifest),
            }
        except Exception as exc:
            await self._set(build, status="failed", error=f"cannot start the builder: {exc}", ended=now_iso())
            return
        env = {
            "BUILD_ID": build,
            "APP": app,
            "RACK": self.rack,
            "SOURCE_BUCKET": self.state.bucket,
            "SOURCE_KEY": source_key,
            "BUILD_NO_CACHE": "true" if options.no_cache else "false",
            "BUILD_MANIFEST": options.manifest or "convox.yml",
        }
        definition = {
            "family": f"{self.rack}-build",
            # the instance's network: the builder reaches the rack, S3 and the registry as the instance does
            # (the engine it drives pushes from there anyway)
            "networkMode": "host",
            "volumes": [{"name": "docker", "host": {"sourcePath": DOCKER_SOCKET}}],
            "containerDefinitions": [
                {
                    "name": "build",
                    "image": self.build_image,
                    "essential": True,
                    "memory": 1024,
                    "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
                    # the instance's Docker Engine builds and pushes (Convox's ApiBuildTasks mount it too)
                    "mountPoints": [{"sourceVolume": "docker", "containerPath": DOCKER_SOCKET, "readOnly": False}],
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {
                            "awslogs-group": log_group(self.state.log_prefix, app),
                            "awslogs-region": self.clients.region,
                            "awslogs-stream-prefix": "build",
                        },
                    },
                }
            ],
        }
        try:
            with translated(f"cannot start build {build}"):
                registered = await ecs.register_task_definition(**definition)
                response = await ecs.run_task(
                    cluster=self.formation.cluster,
                    count=1,
                    startedBy=f"convox.build.{app}",
                    taskDefinition=registered["taskDefinition"]["taskDefinitionArn"],
                    overrides={
                        "containerOverrides": [
                            {"name": "build", "environment": [{"name": k, "value": v} for k, v in secret_env.items()]}
                        ]
                    },
                    launchType=self.formation.settings.launch_type,
                    tags=[{"key": "convox.rack", "value": self.rack}, {"key": "convox.build", "value": build}],
                )
            if not response.get("tasks"):
                raise BadRequest(", ".join(str(f.get("reason")) for f in response.get("failures", [])) or "no task")
        except Exception as exc:
            await self._set(build, status="failed", error=f"cannot start the builder: {exc}", ended=now_iso())
            return
        await self._set(build, status="running", started=now_iso(), task=response["tasks"][0]["taskArn"])

    async def _builder_access(self, app: str, build: str, source_key: str, manifest: Manifest) -> dict[str, str]:
        """What the builder task gets as overrides of this task only (services/builder/task.py reads them):
        what to build (with the build args the app's environment gives), a presigned GET of its source (the
        task needs no S3 rights), where and with what authorisation it pushes (ECR's GetAuthorizationToken,
        good for 12 hours), and the certificate the rack's URL presents."""
        environment: dict[str, str] | None = None
        services: dict[str, dict[str, Any]] = {}
        for name, service in sorted(manifest.services.items()):
            if service.build is None:
                continue
            spec = service.build
            if spec.required_args and environment is None:
                environment = await self.releases.environment(app)
            given = {key: (environment or {})[key] for key in spec.required_args if key in (environment or {})}
            services[name] = {"path": spec.path, "dockerfile": spec.manifest, "args": {**given, **spec.args}}
        s3 = await self.state.s3()
        ecr = await self.clients.get("ecr")
        with translated(f"cannot give build {build} its source and registry"):
            url = await s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.state.bucket, "Key": source_key},
                ExpiresIn=SOURCE_URL_TTL,
            )
            data = (await ecr.get_authorization_token())["authorizationData"][0]
        registry = self.registry or urlsplit(str(data["proxyEndpoint"])).netloc
        ca = self.report_ca or await asyncio.to_thread(read_certificate, self.own_certificate)
        return {
            "BUILD_SERVICES": json.dumps(services, separators=(",", ":")),
            "SOURCE_URL": url,
            "BUILD_PUSH": f"{registry}/{self.rack}/{app}:{{service}}.{build.lower()}",
            "BUILD_AUTH": str(data["authorizationToken"]),
            "RACK_CA": ca,
        }

    def link_resources(self, hook: ResourceHook) -> None:
        self._resources = hook

    async def finish(self, app: str, build: str, images: dict[str, str], error: str = "") -> Build:
        """The builder's report: the images it pushed (one per built process type) and a release, or its
        error. Only a running build can finish (a second report is a BadRequest)."""
        item = await self._item(app, build)
        if item["status"] != "running":
            raise BadRequest(f"build {build} is {item['status']}, not running")
        if error:
            await self._set(build, status="failed", error=error, ended=now_iso())
            return await self.get(app, build)
        env = ResourceEnv()
        if self._resources is not None and item.get("manifest"):
            try:
                env = await self._resources(app, Manifest.model_validate_json(item["manifest"]))
            except RackError as exc:
                await self._set(build, status="failed", error=exc.message, ended=now_iso())
                return await self.get(app, build)
        await self._set(build, images=images)  # what the release's task definitions run
        try:
            release = await self.releases.create_for_build(
                app,
                build,
                item.get("manifest", ""),
                description=item.get("description", ""),
                set=env.set,
                unset=env.unset,
            )
        except RackError as exc:
            await self._set(build, status="failed", error=f"cannot make the release: {exc.message}", ended=now_iso())
            return await self.get(app, build)
        # complete and its release in one write: whoever sees the build complete also sees its release
        await self._set(build, status="complete", release=release.id, ended=now_iso())
        log.log("build.complete", app=app, build=build, release=release.id)
        return await self.get(app, build)

    async def report(self, app: str, build_id: str, token: str, report: BuildReport) -> Build:
        """The builder task's report (``POST /apps/APP/builds/ID/report``), authenticated by the build's own
        token; it is good once: the build is no longer running afterwards."""
        item = await self._item(app, build_id)
        expected = str(item.get("token_hash", ""))
        if not expected or not hmac.compare_digest(token_hash(token), expected):
            raise Unauthorized(f"not the token of build {build_id}")
        if not report.error and item.get("manifest") and item.get("status") == "running":
            services = Manifest.model_validate_json(item["manifest"]).services
            built = {name for name, service in services.items() if not service.image}
            missing, unknown = sorted(built - set(report.images)), sorted(set(report.images) - built)
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"not built {', '.join(unknown)}"] if unknown else []
            if problems:
                raise BadRequest(
                    f"the report of build {build_id} must name an image for each built process type: "
                    + "; ".join(problems)
                )
        return await self.finish(app, build_id, report.images, report.error)

    async def get(self, app: str, build_id: str) -> Build:
        return to_build(await self._item(app, build_id))

    async def list(self, app: str, limit: int = 20) -> list[Build]:
        await self.apps.item(app)
        items = await self.state.query_app(self.state.builds_table, app, max(1, min(limit, 1000)))
        return [to_build(i) for i in items]

    async def logs(self, app: str, build_id: str, follow: bool = True) -> AsyncIterator[bytes]:
        """The builder's output (stream ``build/build/TASKID``), polled until the build has ended."""
        item = await self._item(app, build_id)
        cw = await self.clients.get("logs")
        task = str(item.get("task", "")).rsplit("/", 1)[-1]
        stream = f"build/build/{task}"
        token: str | None = None
        while True:
            ended = (await self._item(app, build_id))["status"] in {"complete", "failed"}
            while task:
                kwargs: dict[str, Any] = {
                    "logGroupName": log_group(self.state.log_prefix, app),
                    "logStreamName": stream,
                    "startFromHead": True,
                }
                if token:
                    kwargs["nextToken"] = token
                try:
                    response = await cw.get_log_events(**kwargs)
                except Exception as exc:
                    if error_code(exc) != "ResourceNotFoundException":
                        with translated(f"cannot read the log of build {build_id}"):
                            raise
                    break
                events = response.get("events", [])
                token = response.get("nextForwardToken")
                if not events:
                    break
                yield b"".join((e["message"].rstrip("\n") + "\n").encode() for e in events)
            if ended or not follow:
                if item.get("error") or (await self._item(app, build_id)).get("error"):
                    yield f"Build failed: {(await self._item(app, build_id)).get('error', '')}\n".encode()
                return
            await asyncio.sleep(1.0)

    async def running(self) -> int:
        """How many builds of the rack are running now (every app's): what the builds cap counts."""
        count = 0
        async for item in self.state.scan(self.state.builds_table):
            if item.get("status") == "running":
                count += 1
        return count

    async def sweep(self) -> int:
        """The owner's start step (:meth:`AwsProvider.workers`): mark failed every build still ``created`` or
        ``running`` whose builder task is stopped or no longer known to ECS (it stopped while no owner ran:
        ECS forgets a stopped task within an hour), or that never got one. Reads the whole builds table, so
        it runs once; :meth:`expire` then follows the tasks ECS stops. Returns how many."""
        count = 0
        async for item in self.state.scan(self.state.builds_table):
            if item.get("status") not in {"created", "running"}:
                continue
            if not item.get("task"):  # its RunTask may be under way: only one left long ago
                created = parse_iso(item.get("created", ""))
                if created is None or (datetime.now(UTC) - created).total_seconds() > NO_TASK_SECONDS:
                    count += await self._expire(item["id"], "the build never got a builder task")
                continue
            described = await self._describe([item["task"]])
            if (task := described.get(item["task"])) is None:
                count += await self._expire(item["id"], f"{RESTARTED} (ECS no longer knows its task)")
            elif task.get("lastStatus") == "STOPPED":
                count += await self._expire(item["id"], stopped_error(task))
        return count

    async def expire(self) -> None:
        """The owner's loop: :meth:`expire_once` every :data:`EXPIRE_INTERVAL`."""
        while True:
            await self.expire_once()
            await asyncio.sleep(EXPIRE_INTERVAL)

    async def expire_once(self) -> int:
        """Mark failed the running builds whose builder task ECS has stopped without a report, with its
        ``stoppedReason`` and exit code as the error; returns how many. Each stopped task is looked at once
        (one read of its build's item), however often ECS lists it."""
        ecs = await self.clients.get("ecs")
        arns: list[str] = []
        kwargs: dict[str, Any] = {
            "cluster": self.formation.cluster,
            "family": f"{self.rack}-build",
            "desiredStatus": "STOPPED",
        }
        while True:
            with translated("cannot list the builder tasks"):
                response = await ecs.list_tasks(**kwargs)
            arns += response.get("taskArns", [])
            if not response.get("nextToken"):
                break
            kwargs["nextToken"] = response["nextToken"]
        self._checked &= set(arns)  # what ECS has forgotten is forgotten here too
        new = [arn for arn in arns if arn not in self._checked]
        count = 0
        for start in range(0, len(new), 100):
            for task in (await self._describe(new[start : start + 100])).values():
                build = next((t.get("value", "") for t in task.get("tags", []) if t.get("key") == "convox.build"), "")
                if task.get("lastStatus") != "STOPPED" or not build:
                    continue
                self._checked.add(str(task["taskArn"]))
                try:
                    item = await self.state.get_item(self.state.builds_table, {"id": build}, "gone")
                except NotFound:
                    continue
                if item.get("status") in {"created", "running"} and item.get("task") == task.get("taskArn"):
                    count += await self._expire(build, stopped_error(task))
        return count

    async def _describe(self, arns: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The builder tasks ``arns`` that ECS knows, by ARN (with their tags)."""
        ecs = await self.clients.get("ecs")
        with translated("cannot describe the builder tasks"):
            described = await ecs.describe_tasks(cluster=self.formation.cluster, tasks=[*arns], include=["TAGS"])
        return {str(t["taskArn"]): t for t in described.get("tasks", [])}

    async def _expire(self, build: str, error: str) -> int:
        """Fail ``build`` if it is still unfinished (a report that came meanwhile wins); 1 if it was."""
        db = await self.state.dynamodb()
        try:
            await db.update_item(
                TableName=self.state.builds_table,
                Key=to_item({"id": build}),
                UpdateExpression="SET #status = :failed, #error = :error, #ended = :ended",
                ConditionExpression="#status IN (:created, :running)",
                ExpressionAttributeNames={"#status": "status", "#error": "error", "#ended": "ended"},
                ExpressionAttributeValues=to_item(
                    {
                        ":failed": "failed",
                        ":error": error,
                        ":ended": now_iso(),
                        ":created": "created",
                        ":running": "running",
                    }
                ),
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return 0
            with translated(f"cannot fail build {build}"):
                raise
        log.log("build.expire", build=build, state="failed", error=error)
        return 1


def stopped_error(task: dict[str, Any]) -> str:
    """Why a builder task that never reported stopped: ECS's ``stoppedReason`` and the container's exit code."""
    reason = str(task.get("stoppedReason") or "no reason given")
    codes = [c.get("exitCode") for c in task.get("containers", []) if c.get("exitCode") is not None]
    code = f", exit code {codes[0]}" if codes else ""
    return f"{RESTARTED} ({reason}{code})"
