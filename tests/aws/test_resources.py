"""The aws provider's backing services on moto: what each type makes in AWS, where, and that a delete or a
failed create leaves nothing. The behaviour shared with the local provider is in tests/contract/test_resources.py.

Simulated: AWS (moto 5 in server mode), and the rack stack's network (a VPC, two subnets and the instances'
security group made in moto: a test double of the rack stack, or a small stack standing in for it). Nothing
listens at moto's endpoints, so no test connects to a server: status comes from the RDS and ElastiCache APIs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest, Conflict, NotFound
from shared.models import Resource
from shared.provider.aws import install
from shared.provider.aws.provider import AwsProvider
from shared.provider.aws.resource_kinds import KINDS, cache_id
from shared.provider.aws.resources import NO_DUMPS, AwsResources
from shared.provider.aws.state import from_item, to_item
from tests.contract.aws_helpers import boto, in_moto, rack_network, use_rack_network
from tests.contract.conftest import running_workers
from tests.moto_server import MotoServer

RACK = "convox"
TAGS = {"System": "convox", "Type": "resource", "Rack": RACK}


@pytest.fixture
def network(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], str]:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    monkeypatch.setenv("RACK_AWS_RESOURCE_TIMEOUT", "1")
    return use_rack_network(monkeypatch)


@pytest.fixture
async def provider(network: tuple[list[str], str], tmp_path: Path) -> AsyncIterator[AwsProvider]:
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK)) as opened:
        await opened.apps.create("web")
        yield opened


async def made(resources: AwsResources, kind: str, name: str, within: float = 30.0) -> Resource:
    """Create the service and wait until it is made (running) or not (failed): a create answers at once."""
    created = await resources.create(kind, name)
    assert created.status == "creating"
    for _ in range(int(within / 0.05)):
        current = await resources.get(name)
        if current.status != "creating":
            return current
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} is still creating after {within} s")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)


def ingress(group: str) -> list[dict[str, Any]]:
    found = boto("ec2").describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
    return list(found["IpPermissions"])


def only_from(group: str, port: int) -> list[tuple[Any, ...]]:
    return [("tcp", port, port, (group,), ())]


def rules(permissions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            p["IpProtocol"],
            p["FromPort"],
            p["ToPort"],
            tuple(g["GroupId"] for g in p.get("UserIdGroupPairs", [])),
            tuple(r["CidrIp"] for r in p.get("IpRanges", [])),
        )
        for p in permissions
    ]


async def items() -> list[dict[str, Any]]:
    return list((await in_moto("dynamodb", "scan", TableName=f"{RACK}-resources"))["Items"])


async def secrets_stored() -> list[str]:
    listed = await in_moto("s3", "list_objects_v2", Bucket=f"{RACK}-settings", Prefix="resources/")
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.parametrize("kind", ["postgres", "mysql", "mariadb"])
async def test_a_database_is_an_rds_stack_in_the_racks_subnets_reachable_from_the_rack_only(
    provider: AwsProvider, network: tuple[list[str], str], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    subnets, instances = network
    spec = KINDS[kind]
    with caplog.at_level(logging.DEBUG, logger="rack"):
        created = await made(provider.resources, kind, "db")
    revealed = (await provider.resources.get("db", reveal=True)).url
    password = revealed.split(":")[2].split("@")[0]
    assert created.status == "running" and len(password) == 48
    assert created.url == revealed.replace(password, "***")
    stack = (await in_moto("cloudformation", "describe_stacks", StackName=f"{RACK}-resource-db"))["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert TAGS.items() <= {t["Key"]: t["Value"] for t in stack["Tags"]}.items()
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert revealed == f"{spec.scheme}://app:{password}@{outputs['Address']}:{spec.port}/app"
    (db,) = (await in_moto("rds", "describe_db_instances"))["DBInstances"]
    assert (db["Engine"], db["EngineVersion"], db["Endpoint"]["Port"]) == (spec.engine, spec.version, spec.port)
    assert (db["StorageEncrypted"], db["PubliclyAccessible"], db["MasterUsername"], db["DBName"]) == (
        True,
        False,
        "app",
        "app",
    )
    assert sorted(s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]) == sorted(subnets)
    assert rules(ingress(outputs["Security"])) == only_from(instances, spec.port)
    assert await provider.resources.address("db") == (outputs["Address"], spec.port)
    # The password: an SSE-KMS object of the settings bucket; never in the record, never in a log line.
    head = await in_moto("s3", "head_object", Bucket=f"{RACK}-settings", Key="resources/db/credentials.json")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert password not in json.dumps(await items()) and password not in caplog.text


async def test_redis_is_a_replication_group_with_an_auth_token_and_tls_reachable_from_the_rack_only(
    provider: AwsProvider, network: tuple[list[str], str]
) -> None:
    subnets, instances = network
    created = await made(provider.resources, "redis", "cache")
    (group,) = (await in_moto("elasticache", "describe_replication_groups"))["ReplicationGroups"]
    assert group["ReplicationGroupId"] == cache_id(RACK, "cache") == f"{RACK}-cache"
    assert (group["AuthTokenEnabled"], group["TransitEncryptionEnabled"], group["AtRestEncryptionEnabled"]) == (
        True,
        True,
        True,
    )
    primary = group["NodeGroups"][0]["PrimaryEndpoint"]
    assert created.url == f"rediss://:***@{primary['Address']}:6379/0"
    (subnet_group,) = (await in_moto("elasticache", "describe_cache_subnet_groups"))["CacheSubnetGroups"]
    assert subnet_group["CacheSubnetGroupName"] == f"{RACK}-services"
    assert sorted(s["SubnetIdentifier"] for s in subnet_group["Subnets"]) == sorted(subnets)
    filters = [{"Name": "group-name", "Values": [f"{RACK}-resource-cache"]}]
    (security,) = (await in_moto("ec2", "describe_security_groups", Filters=filters))["SecurityGroups"]
    assert rules(security["IpPermissions"]) == only_from(instances, 6379)
    assert TAGS.items() <= {t["Key"]: t["Value"] for t in security["Tags"]}.items()


async def test_memcached_has_no_endpoint_on_moto_so_its_create_fails_and_leaves_nothing(provider: AwsProvider) -> None:
    """moto 5 gives a memcached cache cluster no ConfigurationEndpoint and no nodes: the provider waits for
    one (RACK_AWS_RESOURCE_TIMEOUT, 1 s here), then gives up: the service is failed, saying why, and holds
    nothing; a delete removes its record."""
    mc = await made(provider.resources, "memcached", "mc")
    assert mc.status == "failed" and "available but AWS gives it no endpoint" in mc.message
    clusters = (await in_moto("elasticache", "describe_cache_clusters"))["CacheClusters"]
    assert [c["CacheClusterStatus"] for c in clusters] == ["deleting"]  # moto never finishes a delete
    filters = [{"Name": "group-name", "Values": [f"{RACK}-resource-mc"]}]
    assert (await in_moto("ec2", "describe_security_groups", Filters=filters))["SecurityGroups"] == []
    await provider.resources.delete("mc")
    assert await provider.resources.list() == [] and await items() == []


async def test_a_service_on_aws_refuses_export_and_import_with_a_clear_error(provider: AwsProvider) -> None:
    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    await made(provider.resources, "postgres", "dumped")
    for attempt in (provider.resources.export("dumped"), provider.resources.import_("dumped", nothing())):
        with pytest.raises(BadRequest) as refused:
            await attempt
        assert refused.value.message == NO_DUMPS
    with pytest.raises(NotFound):
        await provider.resources.export("nosuch")


async def test_delete_leaves_nothing_but_what_moto_never_finishes_deleting(
    provider: AwsProvider, network: tuple[list[str], str]
) -> None:
    for kind in ("postgres", "mysql", "mariadb", "redis"):
        await made(provider.resources, kind, f"s-{kind}")
    await provider.resources.link("s-redis", "web")
    with pytest.raises(Conflict, match="linked to web"):
        await provider.resources.delete("s-redis")
    await provider.resources.unlink("s-redis", "web")
    for resource in await provider.resources.list():
        await provider.resources.delete(resource.name)
    assert await provider.resources.list() == [] and await items() == [] and await secrets_stored() == []
    await provider.apps.delete("web")  # and its stack (security groups of its own)
    summaries = (await in_moto("cloudformation", "list_stacks"))["StackSummaries"]
    assert len(summaries) == 4 and {s["StackStatus"] for s in summaries} == {"DELETE_COMPLETE"}  # 3 + the app's
    assert (await in_moto("rds", "describe_db_instances"))["DBInstances"] == []
    assert (await in_moto("rds", "describe_db_subnet_groups"))["DBSubnetGroups"] == []
    groups = (await in_moto("elasticache", "describe_replication_groups"))["ReplicationGroups"]
    assert [g["Status"] for g in groups] == ["deleting"]  # on AWS it goes; moto keeps it "deleting" forever
    left = (await in_moto("ec2", "describe_security_groups"))["SecurityGroups"]
    assert sorted(g["GroupName"] for g in left) == ["default", "default", "instances"]  # moto's default VPC's too


async def test_status_is_read_from_aws_after_the_create(provider: AwsProvider) -> None:
    await made(provider.resources, "postgres", "db")
    await made(provider.resources, "redis", "cache")
    (db,) = (await in_moto("rds", "describe_db_instances"))["DBInstances"]
    await in_moto("rds", "delete_db_instance", DBInstanceIdentifier=db["DBInstanceIdentifier"], SkipFinalSnapshot=True)
    await in_moto("elasticache", "delete_replication_group", ReplicationGroupId=f"{RACK}-cache")
    assert {r.name: r.status for r in await provider.resources.list()} == {"cache": "deleting", "db": "missing"}
    with pytest.raises(Conflict, match="not running"):
        await provider.resources.address("db")


async def test_the_network_comes_from_the_rack_stack_outputs(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    subnets, instances = await asyncio.to_thread(rack_network, "10.7.0.0/16")
    template = {
        "Resources": {
            "Nothing": {
                "Type": "AWS::SSM::Parameter",
                "Properties": {"Name": "/convox/x", "Type": "String", "Value": "x"},
            }
        },
        "Outputs": {"Subnets": {"Value": ",".join(subnets)}, "InstancesSecurity": {"Value": instances}},
    }
    await in_moto("cloudformation", "create_stack", StackName=RACK, TemplateBody=json.dumps(template))
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK)) as provider:
        await made(provider.resources, "redis", "cache")
    filters = [{"Name": "group-name", "Values": [f"{RACK}-resource-cache"]}]
    (security,) = (await in_moto("ec2", "describe_security_groups", Filters=filters))["SecurityGroups"]
    assert rules(security["IpPermissions"]) == only_from(instances, 6379)


async def test_without_the_racks_network_a_create_is_refused_and_makes_nothing(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK)) as provider:
        with pytest.raises(BadRequest, match="network is unknown"):
            await made(provider.resources, "postgres", "db")
        assert await provider.resources.list() == []
    assert (await in_moto("cloudformation", "list_stacks"))["StackSummaries"] == []


async def test_the_owner_finishes_what_a_dead_process_cut_short(provider: AwsProvider, tmp_path: Path) -> None:
    await made(provider.resources, "redis", "cache")  # made, then "cut short" before it was recorded running
    await made(provider.resources, "postgres", "gone")  # being deleted when its process died
    await made(provider.resources, "memcached", "busy")  # being made by a process that lives (its lease renewed)
    db = boto("dynamodb")
    alive = time.time() + 600
    for name, status, lease in (("cache", "creating", 0.0), ("gone", "deleting", 0.0), ("busy", "creating", alive)):
        db.update_item(
            TableName=f"{RACK}-resources",
            Key=to_item({"name": name}),
            UpdateExpression="SET #s = :s, lease = :l, runner = :r REMOVE host",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=to_item({":s": status, ":l": lease, ":r": "0123456789abcdef"}),
        )
    db.put_item(  # a postgres whose create died before its stack was made (a record from before leases)
        TableName=f"{RACK}-resources",
        Item=to_item({"name": "never", "type": "postgres", "status": "creating", "stack": f"{RACK}-resource-never"}),
    )
    async with (
        AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK)) as restarted,
        running_workers(restarted),
    ):

        async def settled() -> bool:
            found = [(r.name, r.status) for r in await restarted.resources.list()]
            return found == [("busy", "creating"), ("cache", "running"), ("never", "failed")]

        await eventually(settled)
        assert (await restarted.resources.get("cache")).url.startswith("rediss://:***@master.")
        never = await restarted.resources.get("never")  # failed, saying why, holding nothing
        assert never.message == "postgres never was being created when its process stopped"
        await restarted.resources.delete("never")
        await restarted.resources.reconcile()  # the live one's work stays its own, pass after pass
        busy = from_item(db.get_item(TableName=f"{RACK}-resources", Key=to_item({"name": "busy"}))["Item"])
        assert (busy["status"], busy["runner"], busy["lease"]) == ("creating", "0123456789abcdef", alive)
    assert (await in_moto("rds", "describe_db_instances"))["DBInstances"] == []
    assert await secrets_stored() == ["resources/cache/credentials.json"]


async def test_on_an_installed_rack_services_use_its_network_and_uninstall_removes_them(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rack stack of `convox rack install aws` (on moto) gives the network; `rack uninstall` removes the
    services with the rest. moto keeps a deleted cache ``deleting`` and the API-made cache subnet group."""
    installed = await install.install(RACK, {"Ami": "ami-0123456789abcdef0"}, poll=0.05)
    monkeypatch.setenv("RACK_AWS_BUCKET", installed.outputs["Settings"])  # the stack names its bucket
    monkeypatch.setenv("RACK_AWS_RESOURCE_POLL", "0.05")
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK)) as provider:
        await made(provider.resources, "postgres", "db")
        await made(provider.resources, "redis", "cache")
        await provider.apps.create("web")
        await provider.resources.link("db", "web")
    stack = (await in_moto("cloudformation", "describe_stacks", StackName=f"{RACK}-resource-db"))["Stacks"][0]
    security = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["Security"]
    assert rules(ingress(security)) == only_from(installed.outputs["InstancesSecurity"], 5432)
    (db,) = (await in_moto("rds", "describe_db_instances"))["DBInstances"]
    assert {s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]} == set(
        installed.outputs["Subnets"].split(",")
    )
    await install.uninstall(RACK, poll=0.05)
    assert (await in_moto("cloudformation", "describe_stacks"))["Stacks"] == []
    assert (await in_moto("rds", "describe_db_instances"))["DBInstances"] == []
    groups = (await in_moto("elasticache", "describe_replication_groups"))["ReplicationGroups"]
    assert [g["Status"] for g in groups] == ["deleting"]  # moto never finishes deleting a cache
    left = (await in_moto("ec2", "describe_security_groups"))["SecurityGroups"]
    assert [g["GroupName"] for g in left] == ["default"]  # moto's default VPC's
