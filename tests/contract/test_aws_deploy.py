"""Deploy, scale and ps on the aws provider (moto). Simulated: the builder (its report is made by the test,
see play_builder) and the container instance (registered in moto; no task ever runs on it, so tasks are
records only: ECS services never get tasks on moto, one-offs are RunTask records pinned to RUNNING)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from shared.errors import BadRequest, NotFound
from shared.models import FormationUpdate, ProcessRunOptions
from shared.provider import Provider
from shared.provider.aws.processes import AwsProcesses, ports_of
from tests.conftest import RACK_NAME
from tests.contract.aws_helpers import in_moto, play_builder


async def service(app: str, process_type: str) -> dict[str, Any]:
    described = await in_moto(
        "ecs", "describe_services", cluster=RACK_NAME, services=[f"{RACK_NAME}-{app}_{process_type}"]
    )
    return dict(described["services"][0])


async def container(task_definition: str) -> dict[str, Any]:
    described = await in_moto("ecs", "describe_task_definition", taskDefinition=task_definition)
    return dict(described["taskDefinition"]["containerDefinitions"][0])


def env_of(definition: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in definition["environment"]}


async def test_promote_registers_a_task_definition_per_type_and_updates_its_service(
    aws_provider: Provider, tmp_path: Path
) -> None:
    await aws_provider.apps.create("shop")
    build = await play_builder(aws_provider, "shop", tmp_path)
    release = await aws_provider.releases.create("shop", env={"GREETING": "hi"})
    app = await aws_provider.releases.promote("shop", release.id)
    assert (app.status, app.release) == ("running", release.id)
    web = await service("shop", "web")
    assert web["desiredCount"] == 1 and web["status"] == "ACTIVE"
    definition = await container(web["taskDefinition"])
    assert definition["image"].endswith(f"{RACK_NAME}/shop:web.{build.id.lower()}")
    assert definition["command"] == ["sh", "-c", "python -m http.server 3000"]
    assert definition["memory"] == 256
    assert definition["portMappings"][0]["containerPort"] == 3000
    assert (
        env_of(definition).items() >= {"GREETING": "hi", "RELEASE": release.id, "APP": "shop", "PORT": "3000"}.items()
    )
    assert definition["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": f"/convox/{RACK_NAME}/shop",
            "awslogs-region": "us-east-1",
            "awslogs-stream-prefix": "web",
        },
    }
    worker = await container((await service("shop", "worker"))["taskDefinition"])
    assert (worker["command"] == ["sleep", "infinity"] and "portMappings" not in worker) or not worker["portMappings"]
    formation = await aws_provider.formation.get("shop")
    assert [(f.name, f.count, f.ports) for f in formation] == [("web", 1, ["443:3000"]), ("worker", 1, [])]
    # the app's stack has a balancer for web only (the type with a public port), its HTTPS listener forwarding
    # to the target group that the web service registers its tasks with
    stack = (await in_moto("cloudformation", "describe_stacks", StackName=f"{RACK_NAME}-app-shop"))["Stacks"][0]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert sorted(k for k in out if k.endswith("Balancer")) == ["WebBalancer"]
    assert formation[0].balancer == f"https://{out['WebBalancer']}" == formation[0].endpoints[0]
    assert (await aws_provider.apps.get("shop")).balancer == formation[0].balancer
    assert web["loadBalancers"] == [
        {"targetGroupArn": out["WebPort443Targets"], "containerName": "web", "containerPort": 3000}
    ]
    balancers = await in_moto("elbv2", "describe_load_balancers")
    arn = next(b["LoadBalancerArn"] for b in balancers["LoadBalancers"] if b["DNSName"] == out["WebBalancer"])
    listeners = (await in_moto("elbv2", "describe_listeners", LoadBalancerArn=arn))["Listeners"]
    assert [(listener["Port"], listener["Protocol"]) for listener in listeners] == [(443, "HTTPS")]
    assert not (await service("shop", "worker")).get("loadBalancers")


async def test_rollback_promotes_the_previous_release_again(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("roll")
    first_build = await play_builder(aws_provider, "roll", tmp_path, "1")
    first = await aws_provider.releases.get("roll", first_build.release)
    await aws_provider.releases.promote("roll", first.id)
    second = (await play_builder(aws_provider, "roll", tmp_path, "2")).release
    await aws_provider.releases.promote("roll", second)
    before = await service("roll", "web")
    # what `convox releases rollback` does (services/apps/releases.py): a new release of the old build
    back = await aws_provider.releases.create("roll", build=first.build, env=first.env, description="rollback")
    await aws_provider.releases.promote("roll", back.id)
    after = await service("roll", "web")
    assert after["taskDefinition"] != before["taskDefinition"]
    definition = await container(after["taskDefinition"])
    assert definition["image"].endswith(f":web.{first.build.lower()}")
    assert env_of(definition)["RELEASE"] == back.id
    assert (await aws_provider.apps.get("roll")).release == back.id


async def test_two_concurrent_promotes_both_happen_in_turn(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("race")
    built = await play_builder(aws_provider, "race", tmp_path)
    one = await aws_provider.releases.create("race", env={"V": "1"})
    two = await aws_provider.releases.create("race", env={"V": "2"})
    assert built.release
    apps = await asyncio.gather(
        aws_provider.releases.promote("race", one.id), aws_provider.releases.promote("race", two.id)
    )
    final = (await aws_provider.apps.get("race")).release
    assert final in {one.id, two.id} and {a.release for a in apps} <= {one.id, two.id}
    assert env_of(await container((await service("race", "web"))["taskDefinition"]))["RELEASE"] == final
    revisions = await in_moto("ecs", "list_task_definitions", familyPrefix=f"{RACK_NAME}-race_web")
    assert len(revisions["taskDefinitionArns"]) == 2  # one per promote: neither was lost


async def test_scale_sets_the_desired_count_and_memory(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("scaled")
    build = await play_builder(aws_provider, "scaled", tmp_path)
    await aws_provider.releases.promote("scaled", build.release)
    web = await aws_provider.formation.scale("scaled", "web", FormationUpdate(count=3))
    assert web.count == 3 and (await service("scaled", "web"))["desiredCount"] == 3
    web = await aws_provider.formation.scale("scaled", "web", FormationUpdate(memory=512))
    assert (web.count, web.memory) == (3, 512)
    assert (await container((await service("scaled", "web"))["taskDefinition"]))["memory"] == 512
    again = await aws_provider.releases.create("scaled", env={"X": "1"})
    await aws_provider.releases.promote("scaled", again.id)
    assert (await service("scaled", "web"))["desiredCount"] == 3  # a promote keeps the scale
    with pytest.raises(NotFound):
        await aws_provider.formation.scale("scaled", "nosuch", FormationUpdate(count=1))
    with pytest.raises(BadRequest):
        await aws_provider.formation.scale("scaled", "web", FormationUpdate())
    await aws_provider.apps.create("fresh")
    with pytest.raises(BadRequest):
        await aws_provider.formation.scale("fresh", "web", FormationUpdate(count=1))


async def test_ps_lists_only_the_apps_own_tasks(aws_provider: Provider, tmp_path: Path) -> None:
    for name in ("a", "a-b"):  # one app's name is a prefix of the other's
        await aws_provider.apps.create(name)
        build = await play_builder(aws_provider, name, tmp_path, name)
        await aws_provider.releases.promote(name, build.release)
    mine = await aws_provider.processes.run("a", ProcessRunOptions(service="web", command=["echo", "hi"]))
    theirs = await aws_provider.processes.run("a-b", ProcessRunOptions(service="worker"))
    assert re.fullmatch(r"[0-9a-f]{12}", mine.id)
    listed = await aws_provider.processes.list("a")
    assert [(p.id, p.name, p.command) for p in listed] == [(mine.id, "web", "echo hi")]
    assert listed[0].release == (await aws_provider.apps.get("a")).release and listed[0].started is not None
    assert [p.id for p in await aws_provider.processes.list("a-b")] == [theirs.id]
    with pytest.raises(NotFound):
        await aws_provider.processes.get("a", theirs.id)
    with pytest.raises(NotFound):
        await aws_provider.processes.stop("a", theirs.id)
    task = await in_moto("ecs", "list_tasks", cluster=RACK_NAME, startedBy="convox.a", desiredStatus="RUNNING")
    described = await in_moto("ecs", "describe_tasks", cluster=RACK_NAME, tasks=task["taskArns"])
    assert described["tasks"][0]["taskArn"].replace("-", "").endswith(mine.id)
    # host: the private address of the task's instance (moto's EC2 record of the registered test double)
    instance = await in_moto(
        "ecs",
        "describe_container_instances",
        cluster=RACK_NAME,
        containerInstances=[described["tasks"][0]["containerInstanceArn"]],
    )
    reservations = await in_moto(
        "ec2", "describe_instances", InstanceIds=[instance["containerInstances"][0]["ec2InstanceId"]]
    )
    private_ip = reservations["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    assert listed[0].host == private_ip == (await aws_provider.processes.get("a", mine.id)).host
    assert listed[0].ports == ["3000"]  # moto reports no network bindings: the definition's port
    await aws_provider.processes.stop("a", mine.id)
    assert await aws_provider.processes.list("a") == []


async def test_a_one_off_is_stopped_at_its_time_limit(aws_provider: Provider, tmp_path: Path) -> None:
    await aws_provider.apps.create("limited")
    build = await play_builder(aws_provider, "limited", tmp_path)
    await aws_provider.releases.promote("limited", build.release)
    process = await aws_provider.processes.run("limited", ProcessRunOptions(service="worker"), time_limit=3)
    kept = await aws_provider.processes.run("limited", ProcessRunOptions(service="worker"))
    processes = aws_provider.processes
    assert isinstance(processes, AwsProcesses)
    assert await processes.reap() == 0
    deadline = asyncio.get_running_loop().time() + 10
    while await processes.reap() == 0:
        assert asyncio.get_running_loop().time() < deadline, "the one-off outlived its time limit"
        await asyncio.sleep(0.1)
    assert [p.id for p in await aws_provider.processes.list("limited")] == [kept.id]
    assert process.id != kept.id


async def test_deleting_an_app_removes_its_services_and_task_definitions(
    aws_provider: Provider, tmp_path: Path
) -> None:
    await aws_provider.apps.create("doomed")
    build = await play_builder(aws_provider, "doomed", tmp_path)
    await aws_provider.releases.promote("doomed", build.release)
    await aws_provider.processes.run("doomed", ProcessRunOptions(service="worker"))
    await aws_provider.apps.delete("doomed")
    services = await in_moto("ecs", "list_services", cluster=RACK_NAME)
    arns = [s for s in services["serviceArns"] if "doomed" in s]
    if arns:  # moto keeps listing deleted services; what it describes must not be active
        described = await in_moto("ecs", "describe_services", cluster=RACK_NAME, services=arns)
        assert {s["status"] for s in described["services"]} <= {"INACTIVE", "DRAINING"}
    definitions = await in_moto("ecs", "list_task_definitions", familyPrefix=f"{RACK_NAME}-doomed_")
    assert definitions["taskDefinitionArns"] == []
    tasks = await in_moto("ecs", "list_tasks", cluster=RACK_NAME, startedBy="convox.doomed", desiredStatus="RUNNING")
    assert tasks["taskArns"] == []
    groups = await in_moto("logs", "describe_log_groups", logGroupNamePrefix=f"/convox/{RACK_NAME}/doomed")
    assert groups["logGroups"] == []


async def test_restart_gives_each_service_a_new_deployment_and_cancel_needs_a_roll_out(
    aws_provider: Provider, tmp_path: Path
) -> None:
    """Simulated: the builder (play_builder). moto finishes every ECS deployment at once, so there is never a
    roll-out in progress to cancel: cancel is proven to refuse (409) and to change nothing."""
    from shared.errors import Conflict

    await aws_provider.apps.create("again")
    await play_builder(aws_provider, "again", tmp_path)
    release = await aws_provider.releases.create("again")
    await aws_provider.releases.promote("again", release.id)
    before = await service("again", "web")
    formation = await aws_provider.formation.restart("again", "web")
    assert "web" in [f.name for f in formation]
    after = await service("again", "web")
    assert after["taskDefinition"] == before["taskDefinition"]
    with pytest.raises(NotFound):
        await aws_provider.formation.restart("again", "wbe")
    with pytest.raises(Conflict):
        await aws_provider.formation.cancel("again")
    assert (await service("again", "web"))["taskDefinition"] == before["taskDefinition"]
    assert (await aws_provider.apps.get("again")).release == release.id


def test_ps_ports_are_the_network_bindings_once_the_agent_has_bound_them() -> None:
    task = {"containers": [{"networkBindings": [{"hostPort": 32768, "containerPort": 3000, "protocol": "tcp"}]}]}
    definition = {"portMappings": [{"containerPort": 3000}]}
    assert ports_of(task, definition) == ["32768:3000"]
    assert ports_of({"containers": [{}]}, definition) == ["3000"]
