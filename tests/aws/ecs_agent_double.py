"""Test double of the ECS container agent's exit report: moto has no SubmitContainerStateChange, and every
container of a moto task reports exit code 0. The agent on a real instance reports the code a container
exited with, and ECS then shows it in ``describe_tasks`` as ``containers[].exitCode`` of the STOPPED task.

:class:`ReportedExits` simulates exactly that and nothing more: registered on the provider's own ECS client
(a botocore ``after-call`` hook, in the test only; the product never imports this), it sets the exit code a
test names for a task once moto says that task is STOPPED. The provider's code reading it runs unchanged.
"""

from __future__ import annotations

from typing import Any

from shared.provider.aws.provider import AwsProvider


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
