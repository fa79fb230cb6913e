"""Test double of the ECS container agent's part in a build task (moto places tasks and runs nothing).

It plays only what the agent on a container instance would do with the build task the rack started: read the
task and its task definition as moto stores them, start the definition's one container on the local Docker
Engine from them and nothing else (the image, the definition's environment then the task's overrides, the
host volumes and mount points, the network mode, the memory), ship the container's output line by line to
the awslogs group and stream the definition names (``PREFIX/CONTAINER/TASKID``) with PutLogEvents, and at
the container's exit stop the task in moto (moto keeps no exit code: it is returned here). Everything the
build does is the real builder image's own work.

Never imported by the product.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.aws.builder_double import BuilderTask, boto, wait_for_task


@dataclass
class Ran:
    task: BuilderTask
    exit_code: int
    lines: list[str] = field(default_factory=list)
    """The container's output, as shipped to the log stream."""


def docker() -> str:
    found = shutil.which("docker")
    assert found, "the docker CLI is missing"
    return found


def run_args(task: BuilderTask, label: str) -> tuple[list[str], dict[str, str]]:
    """``docker run`` arguments for the task's container, and the CLI's environment carrying the container's
    variables (``-e NAME`` takes its value from there: values may hold newlines, as a PEM does)."""
    definition = task.described["definition"]
    (container,) = definition["containerDefinitions"]
    volumes = {v["name"]: v["host"]["sourcePath"] for v in definition.get("volumes", []) if v.get("host")}
    args = [docker(), "run", "-d", "--label", f"convox.rack={label}", "--label", f"ecs.task={task.arn}"]
    mode = definition.get("networkMode", "bridge")
    if mode == "host":
        args += ["--network", "host"]
    elif mode != "bridge":
        raise AssertionError(f"the agent double runs bridge and host tasks, not {mode}")
    for mount in container.get("mountPoints", []):
        suffix = ":ro" if mount.get("readOnly") else ""
        args += ["-v", f"{volumes[mount['sourceVolume']]}:{mount['containerPath']}{suffix}"]
    if container.get("memory"):
        args += ["-m", f"{container['memory']}m"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name, value in task.env.items():
        args += ["-e", name]
        env[name] = value
    return [*args, container["image"]], env


def ship(group: str, stream: str, lines: list[str]) -> None:
    if lines:
        now = int(time.time() * 1000)
        boto("logs").put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": now, "message": line} for line in lines],
        )


def run_build_task(cluster: str, app: str, label: str, timeout: float = 600.0) -> Ran:
    """Run the build task the rack started for ``app`` to its end, as the agent would; ``label`` marks the
    container for the test's clean-up."""
    task = wait_for_task(cluster, app)
    definition = task.described["definition"]
    (container,) = definition["containerDefinitions"]
    options = container["logConfiguration"]["options"]
    group = options["awslogs-group"]
    stream = f"{options['awslogs-stream-prefix']}/{container['name']}/{task.arn.rsplit('/', 1)[-1]}"
    logs = boto("logs")
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    args, env = run_args(task, label)
    started = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, f"docker run: {started.stderr}"
    cid = started.stdout.strip()
    ran = Ran(task=task, exit_code=-1)
    try:
        follow = subprocess.Popen([docker(), "logs", "-f", cid], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert follow.stdout is not None

        def pump() -> None:  # the awslogs driver: each line an event, shipped as it comes
            assert follow.stdout is not None
            for raw in follow.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                ran.lines.append(line)
                ship(group, stream, [line])

        shipper = threading.Thread(target=pump, daemon=True)
        shipper.start()
        waited = subprocess.run([docker(), "wait", cid], capture_output=True, text=True, timeout=timeout, check=False)
        ran.exit_code = int(waited.stdout.strip() or -1)
        follow.wait(timeout=30)  # `docker logs -f` ends with the container
        shipper.join(timeout=30)
    finally:
        with contextlib.suppress(Exception):
            follow.kill()
            follow.wait(timeout=10)
        with contextlib.suppress(Exception):
            if follow.stdout is not None:
                follow.stdout.close()
        subprocess.run([docker(), "rm", "-f", cid], capture_output=True, check=False)
    boto("ecs").stop_task(
        cluster=cluster, task=task.arn, reason=f"Essential container in task exited ({ran.exit_code})"
    )
    return ran


def stream_events(group: str, stream: str) -> list[dict[str, Any]]:
    return list(boto("logs").get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"])
