"""Test double of the ECS container agent on one container instance, playing real containers.

moto places tasks but runs none. :class:`ContainerAgent` does what the agent on an EC2 container instance
does for the rack's purposes:

- it registers an instance in moto as a container instance of the cluster, with the attribute
  ``convox.engine=HOST:PORT`` (on AWS the agent registers it from ``ECS_INSTANCE_ATTRIBUTES``; moto drops
  attributes given at registration, so the double puts it with PutAttributes right after);
- it runs every task placed on that instance (RUNNING in moto) as a real container on this host's Docker
  Engine: the task definition's image, command, environment and memory with the task's overrides, and the
  labels the real agent puts on containers (``com.amazonaws.ecs.task-arn``, ``...container-name``,
  ``...cluster``, ``...task-definition-family``) plus the definition's dockerLabels;
- it removes the container of a task that is stopped in moto (StopTask), and stops in moto a task whose
  container has exited (what the agent reports; moto keeps no exit code).

It polls moto through boto3 (``interval`` seconds) in a thread of its own. The engine it registers is the
test's TLS front (tests/aws_engine/tls_front_double.py), which forwards to this host's engine.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
LABEL_TASK = "com.amazonaws.ecs.task-arn"
LABEL_CLUSTER = "com.amazonaws.ecs.cluster"


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise RuntimeError(f"docker {' '.join(args[:2])} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def register_instance(cluster: str, engine: str) -> str:
    """A container instance of ``cluster`` whose engine is at ``engine`` (``HOST:PORT``); its ARN."""
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    ecs = boto3.client("ecs", region_name=REGION)
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.large")
    instance_id = instance["Instances"][0]["InstanceId"]
    document = {"instanceId": instance_id, "region": REGION, "availabilityZone": f"{REGION}a", "accountId": ACCOUNT}
    registered = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=json.dumps(document))
    arn = str(registered["containerInstance"]["containerInstanceArn"])
    ecs.put_attributes(
        cluster=cluster,
        attributes=[{"name": "convox.engine", "value": engine, "targetId": arn}],
    )
    return arn


class ContainerAgent:
    def __init__(self, cluster: str, engine: str, interval: float = 0.1) -> None:
        import boto3

        self.cluster = cluster
        self.ecs = boto3.client("ecs", region_name=REGION)
        self.instance = register_instance(cluster, engine)
        self.interval = interval
        self.containers: dict[str, str] = {}
        """Container id by task ARN, for the tasks this agent started."""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ecs-agent-double", daemon=True)

    def start(self) -> ContainerAgent:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and remove every container this agent made (the test's clean-up)."""
        self._stop.set()
        self._thread.join(timeout=30)
        left = docker("ps", "-aq", "--filter", f"label={LABEL_CLUSTER}={self.cluster}").split()
        if left:
            docker("rm", "-f", *left, check=False)

    def running_containers(self) -> list[str]:
        """The ids of this cluster's containers that exist on the engine now (any state)."""
        return docker("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_CLUSTER}={self.cluster}").split()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # the double keeps playing; the test sees what went wrong
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def step(self) -> None:
        running = set(
            self.ecs.list_tasks(cluster=self.cluster, containerInstance=self.instance, desiredStatus="RUNNING")[
                "taskArns"
            ]
        )
        for arn in sorted(running - set(self.containers)):
            task = self.ecs.describe_tasks(cluster=self.cluster, tasks=[arn])["tasks"][0]
            self.containers[arn] = self._run(task)
        for arn in sorted(set(self.containers) - running):
            docker("rm", "-f", self.containers.pop(arn), check=False)
        for arn, container in list(self.containers.items()):
            state = docker("inspect", "-f", "{{.State.Status}}", container, check=False).strip()
            if state in {"exited", "dead", ""}:
                self.ecs.stop_task(cluster=self.cluster, task=arn, reason="Essential container in task exited")
                docker("rm", "-f", self.containers.pop(arn), check=False)

    def _run(self, task: dict[str, Any]) -> str:
        definition = self.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        container = definition["containerDefinitions"][0]
        command = list(container.get("command") or [])
        env = {e["name"]: e["value"] for e in container.get("environment") or []}
        memory = container.get("memory") or definition.get("memory")
        for override in (task.get("overrides") or {}).get("containerOverrides", []):
            if override.get("name") not in (None, container["name"]):
                continue
            command = list(override.get("command") or command)
            env.update({e["name"]: e["value"] for e in override.get("environment") or []})
            memory = override.get("memory") or memory
        labels = {
            **(container.get("dockerLabels") or {}),
            LABEL_TASK: task["taskArn"],
            "com.amazonaws.ecs.container-name": container["name"],
            LABEL_CLUSTER: self.cluster,
            "com.amazonaws.ecs.task-definition-family": definition["family"],
        }
        args = ["run", "-d"]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if memory:
            args += ["--memory", f"{int(memory)}m"]
        args.append(container["image"])
        return docker(*args, *command).strip()
