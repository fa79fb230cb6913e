"""Test double of the rack's builder task on moto (moto places the task and runs nothing).

It does what the builder image does, from what the task was given and nothing else: it finds the build task
the rack started (``startedBy=convox.build.APP``), reads its environment (the definition's, then the
overrides: ``BUILD_ID``, ``SOURCE_BUCKET``, ``SOURCE_KEY``, ``BUILD_MANIFEST``, ``BUILD_TOKEN``,
``RACK_URL``), downloads the source from S3, reads the manifest in it, writes its output to the build's log
stream (``build/build/TASKID``, as the awslogs driver would), reports the image of each built process type to
``RACK_URL`` with the build's token, and stops its task (its exit). What it does not do: build or push an
image (moto ECR has no registry), so the images it reports exist only as names.

Never imported by the product.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ACCOUNT = "123456789012"
REGION = "us-east-1"


def boto(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


@dataclass
class BuilderTask:
    arn: str
    env: dict[str, str]
    """The container's environment as ECS would start it: the task definition's, then the overrides."""
    described: dict[str, Any]


def wait_for_task(cluster: str, app: str, timeout: float = 60.0) -> BuilderTask:
    """The build task the rack started for ``app`` (polled: the rack starts it after the upload)."""
    ecs = boto("ecs")
    deadline = time.monotonic() + timeout
    while True:
        arns = ecs.list_tasks(cluster=cluster, startedBy=f"convox.build.{app}", desiredStatus="RUNNING")["taskArns"]
        if arns:
            break
        assert time.monotonic() < deadline, f"the rack started no build task for {app}"
        time.sleep(0.1)
    task = ecs.describe_tasks(cluster=cluster, tasks=arns[:1], include=["TAGS"])["tasks"][0]
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    container = definition["containerDefinitions"][0]
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    for override in task.get("overrides", {}).get("containerOverrides", []):
        if override.get("name") == container["name"]:
            env.update({e["name"]: e["value"] for e in override.get("environment", [])})
    return BuilderTask(arn=task["taskArn"], env=env, described={"task": task, "definition": definition})


def built_services(source: bytes, manifest: str) -> list[str]:
    """The process types the manifest in the source tarball builds (``build:``, not ``image:``)."""
    with tarfile.open(fileobj=io.BytesIO(source), mode="r:gz") as tar:  # members "x" or "./x": the uploader's
        found = [m for m in tar.getmembers() if m.isfile() and posixpath.normpath(m.name) == manifest]
        member = tar.extractfile(found[-1]) if found else None
        assert member is not None, f"no {manifest} in the source"
        data = yaml.safe_load(member.read())
    return sorted(name for name, spec in (data.get("services") or {}).items() if not (spec or {}).get("image"))


def play(cluster: str, app: str, verify: Any) -> str:
    """Run one build of ``app`` as the builder would; returns the build id. ``verify`` is the trust in the
    rack's certificate that the builder image would carry."""
    task = wait_for_task(cluster, app)
    env = task.env
    build, rack = env["BUILD_ID"], env["RACK"]
    source = boto("s3").get_object(Bucket=env["SOURCE_BUCKET"], Key=env["SOURCE_KEY"])["Body"].read()
    services = built_services(source, env.get("BUILD_MANIFEST") or "convox.yml")
    images = {s: f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{rack}/{app}:{s}.{build.lower()}" for s in services}
    group = next(
        c["logConfiguration"]["options"]["awslogs-group"] for c in task.described["definition"]["containerDefinitions"]
    )
    stream = f"build/build/{task.arn.rsplit('/', 1)[-1]}"
    logs = boto("logs")
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    lines = [f"Building {s} (test double: nothing is built)" for s in services]
    lines += [f"Pushed {image}" for image in images.values()]
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": now + n, "message": line} for n, line in enumerate(lines)],
    )
    response = httpx.post(
        f"{env['RACK_URL']}/apps/{app}/builds/{build}/report",
        json={"images": images},
        headers={"X-Build-Token": env["BUILD_TOKEN"]},
        verify=verify,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    boto("ecs").stop_task(cluster=cluster, task=task.arn, reason="Essential container in task exited")
    return build


def source_tree(directory: Path, manifest: str) -> Path:
    directory.mkdir()
    (directory / "convox.yml").write_text(manifest)
    (directory / "Dockerfile").write_text("FROM busybox\n")
    return directory
