"""Test doubles of the ECS container agent.

Registration at boot: :func:`register_instances` registers every instance of the rack's auto-scaling group
in its cluster, as the agent does when an instance starts (moto boots nothing), so that RunTask places tasks.

Services: :func:`converge_services` plays the service scheduler (moto starts no task for a service).

Exit reports: moto has no SubmitContainerStateChange, and every container of a moto task reports exit
code 0. The agent on a real instance reports the code a container exited with, and ECS then shows it in
``describe_tasks`` as ``containers[].exitCode`` of the STOPPED task.

:class:`ReportedExits` simulates exactly that and nothing more: registered on the provider's own ECS client
(a botocore ``after-call`` hook, in the test only; the product never imports this), it sets the exit code a
test names for a task once moto says that task is STOPPED. The provider's code reading it runs unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from shared.provider.aws.provider import AwsProvider

ACCOUNT = "123456789012"
REGION = "us-east-1"


def register_instances(cluster: str) -> list[str]:
    """Test double of the ECS container agent: every instance of the rack's auto-scaling group registers in
    the cluster (what the agent does at boot, from the UserData's ECS_CLUSTER); nothing runs on them."""
    import boto3

    autoscaling = boto3.client("autoscaling", region_name=REGION)
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[f"{cluster}-instances"])
    ids = [i["InstanceId"] for g in groups["AutoScalingGroups"] for i in g["Instances"]]
    assert ids, "the rack's auto-scaling group has no instance"
    arns = []
    for instance in ids:
        document = {
            "instanceId": instance,
            "region": REGION,
            "availabilityZone": f"{REGION}a",
            "accountId": ACCOUNT,
        }
        registered = boto3.client("ecs", region_name=REGION).register_container_instance(
            cluster=cluster, instanceIdentityDocument=json.dumps(document)
        )
        arns.append(registered["containerInstance"]["containerInstanceArn"])
    return arns


class ReportedExits:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        """Exit code by task ARN, as the agent would report it when the task's container exited."""

    async def install(self, provider: AwsProvider) -> None:
        ecs = await provider.clients.get("ecs")
        ecs.meta.events.register("after-call.ecs.DescribeTasks", self._after_describe)

    def exited(self, task_arn: str, code: int) -> None:
        self.codes[task_arn] = code

    def _after_describe(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        for task in parsed.get("tasks", []):
            code = self.codes.get(str(task.get("taskArn", "")))
            if code is None or task.get("lastStatus") != "STOPPED":
                continue
            for container in task.get("containers", []):
                container["exitCode"] = code


def converge_services(cluster: str) -> int:
    """Test double of the ECS service scheduler, one pass (moto's services never get tasks): each service
    runs ``desiredCount`` tasks of its current task definition, in its group ``service:NAME``, with the task
    definition's tags (``propagateTags=TASK_DEFINITION``); tasks of an older definition and extra ones are
    stopped. Real ECS does this continuously; a test calls it where it wants the scheduler to have acted.
    Returns how many tasks it started or stopped."""
    import boto3

    ecs = boto3.client("ecs", region_name=REGION)
    changed = 0
    arns = ecs.list_services(cluster=cluster)["serviceArns"]
    for start in range(0, len(arns), 10):
        for service in ecs.describe_services(cluster=cluster, services=arns[start : start + 10])["services"]:
            if service["status"] != "ACTIVE":
                continue
            group = f"service:{service['serviceName']}"
            running = ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"]
            tasks = ecs.describe_tasks(cluster=cluster, tasks=running)["tasks"] if running else []
            mine = [t for t in tasks if t.get("group") == group]
            current = [t for t in mine if t["taskDefinitionArn"] == service["taskDefinition"]]
            doomed = [t for t in mine if t not in current] + current[service["desiredCount"] :]
            for task in doomed:
                ecs.stop_task(cluster=cluster, task=task["taskArn"], reason="Scaling activity initiated by deployment")
                changed += 1
            missing = service["desiredCount"] - min(len(current), service["desiredCount"])
            if missing > 0:
                described = ecs.describe_task_definition(taskDefinition=service["taskDefinition"], include=["TAGS"])
                placed = ecs.run_task(
                    cluster=cluster,
                    taskDefinition=service["taskDefinition"],
                    count=missing,
                    group=group,
                    startedBy=f"ecs-svc/{service['serviceArn'].rsplit('/', 1)[-1]}",
                    launchType=service.get("launchType") or "EC2",
                    tags=described.get("tags", []),
                )
                assert not placed.get("failures"), placed["failures"]
                changed += len(placed["tasks"])
    return changed
