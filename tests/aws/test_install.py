"""`convox rack install aws`, `rack params`, `rack uninstall`, driven through the CLI against moto.

Simulated: AWS itself (moto in server mode; its CloudFormation creates resources at once, emits only
stack-level events, runs no instance and no task). What the stack would start (the rack's API on ECS)
does not run, so the CLI's login is checked as stored, not by calling the rack.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from shared.provider.aws import stacks
from shared.provider.aws.credentials import session
from shared.provider.aws.templates import PortMap, ProcessPorts, app_template
from tests.moto_server import MotoServer

ROOT = Path(__file__).resolve().parents[2]
KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CSV_FORMS = {
    "2 columns": f"Access key ID,Secret access key\n{KEY},{SECRET}\n",
    "3 columns": f"User Name,Access Key Id,Secret Access Key\nalice,{KEY},{SECRET}\n",
    "5 columns, BOM, CRLF": (
        "\ufeffUser name,Password,Access key ID,Secret access key,Console login link\r\n"
        f"bob,p4ss,{KEY},{SECRET},https://123456789012.signin.aws.amazon.com/console\r\n"
    ),
}


def convox(aws: MotoServer, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(config.parent), "CONVOX_CONFIG": str(config), **aws.env()}
    if "--credentials" in args:  # the .csv's key, not the environment's (without it: the standard chain)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.pop(key)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def param_rows(text: str) -> dict[str, str]:
    """`convox rack params` output: ``Name  value`` lines (an empty value is a name alone)."""
    rows = [line.split(None, 1) for line in text.splitlines() if line.strip()]
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in rows}


async def leftovers() -> dict[str, list[Any]]:
    """Everything in the (moto) account that a rack could have made, by kind; empty lists are dropped."""
    sess = session(None, "us-east-1")
    found: dict[str, list[Any]] = {}
    async with (
        sess.client("cloudformation") as cfn,
        sess.client("ecs") as ecs,
        sess.client("elbv2") as elb,
        sess.client("ec2") as ec2,
        sess.client("dynamodb") as ddb,
        sess.client("s3") as s3,
        sess.client("logs") as logs,
        sess.client("ecr") as ecr,
        sess.client("iam") as iam,
        sess.client("ssm") as ssm,
        sess.client("acm") as acm,
        sess.client("autoscaling") as asg,
        sess.client("rds") as rds,
        sess.client("elasticache") as cache,
        sess.client("kms", config=Config(retries={"max_attempts": 1})) as kms,  # moto's 500 below: no retries
    ):
        found["stacks"] = [s["StackName"] for s in (await cfn.describe_stacks())["Stacks"]]
        clusters = (await ecs.describe_clusters(clusters=(await ecs.list_clusters())["clusterArns"]))["clusters"]
        found["clusters"] = [c["clusterName"] for c in clusters if c["status"] == "ACTIVE"]
        found["services"] = []
        for cluster in clusters:
            arns = (await ecs.list_services(cluster=cluster["clusterArn"]))["serviceArns"]
            described = (await ecs.describe_services(cluster=cluster["clusterArn"], services=arns))["services"]
            found["services"] += [(x["serviceName"], x["status"]) for x in described if x["status"] != "INACTIVE"]
        found["task definitions"] = (await ecs.list_task_definitions(status="ACTIVE"))["taskDefinitionArns"]
        found["balancers"] = [b["LoadBalancerName"] for b in (await elb.describe_load_balancers())["LoadBalancers"]]
        found["target groups"] = [t["TargetGroupName"] for t in (await elb.describe_target_groups())["TargetGroups"]]
        found["vpcs"] = [v["VpcId"] for v in (await ec2.describe_vpcs())["Vpcs"] if not v.get("IsDefault")]
        found["security groups"] = [
            g["GroupId"]
            for g in (await ec2.describe_security_groups())["SecurityGroups"]
            if g["GroupName"] != "default"
        ]
        found["db instances"] = [i["DBInstanceIdentifier"] for i in (await rds.describe_db_instances())["DBInstances"]]
        found["db subnet groups"] = [
            g["DBSubnetGroupName"] for g in (await rds.describe_db_subnet_groups())["DBSubnetGroups"]
        ]
        found["caches"] = [c["CacheClusterId"] for c in (await cache.describe_cache_clusters())["CacheClusters"]]
        found["replication groups"] = [
            g["ReplicationGroupId"] for g in (await cache.describe_replication_groups())["ReplicationGroups"]
        ]
        found["cache subnet groups"] = [
            g["CacheSubnetGroupName"]
            for g in (await cache.describe_cache_subnet_groups())["CacheSubnetGroups"]
            if g["CacheSubnetGroupName"] != "default"
        ]
        found["launch templates"] = [
            t["LaunchTemplateName"] for t in (await ec2.describe_launch_templates())["LaunchTemplates"]
        ]
        found["auto-scaling groups"] = [
            g["AutoScalingGroupName"] for g in (await asg.describe_auto_scaling_groups())["AutoScalingGroups"]
        ]
        found["tables"] = (await ddb.list_tables())["TableNames"]
        found["buckets"] = [b["Name"] for b in (await s3.list_buckets())["Buckets"]]
        found["log groups"] = [g["logGroupName"] for g in (await logs.describe_log_groups())["logGroups"]]
        found["repositories"] = [r["repositoryName"] for r in (await ecr.describe_repositories())["repositories"]]
        found["roles"] = [r["RoleName"] for r in (await iam.list_roles())["Roles"]]
        found["instance profiles"] = [
            p["InstanceProfileName"] for p in (await iam.list_instance_profiles())["InstanceProfiles"]
        ]
        found["parameters"] = [  # not AWS's public parameters (moto lists those it has served)
            p["Name"] for p in (await ssm.describe_parameters())["Parameters"] if not p["Name"].startswith("/aws/")
        ]
        keys = (await kms.list_keys())["Keys"]
        found["keys"] = [k["KeyId"] for k in keys if await _key_state(kms, k) != "PendingDeletion"]
        found["aliases"] = [
            a["AliasName"] for a in (await kms.list_aliases())["Aliases"] if not a["AliasName"].startswith("alias/aws/")
        ]
        found["certificates"] = [c["CertificateArn"] for c in (await acm.list_certificates())["CertificateSummaryList"]]
    return {k: v for k, v in found.items() if v}


async def _key_state(kms: Any, key: dict[str, Any]) -> str:
    """A KMS key's state (AWS deletes a key only after a waiting period: pending deletion counts as gone).
    moto 5 cannot describe a key that its CloudFormation made (it keeps the key policy as a dict: a 500):
    such a key is there."""
    try:
        return str((await kms.describe_key(KeyId=key["KeyId"]))["KeyMetadata"]["KeyState"])
    except Exception as exc:
        if "500" not in str(exc):
            raise
        return "Enabled"


async def add_app_and_leaks(rack: str) -> None:
    """What a running rack adds: an app stack (tagged Rack=<rack>) and, through the ECS and ELBv2 APIs the
    provider uses, a task definition, a service and a target group (moto's stack deletion leaks those)."""
    sess = session(None, "us-east-1")
    async with sess.client("cloudformation") as cfn, sess.client("ecs") as ecs, sess.client("elbv2") as elb:
        rack_stack = await stacks.describe(cfn, rack)
        assert rack_stack is not None
        out, params = stacks.outputs(rack_stack), stacks.parameters(rack_stack)
        app = await stacks.create(
            cfn,
            f"{rack}-myapp",
            app_template(rack, "myapp", [ProcessPorts(name="web", public=[PortMap(port=443, container=3000)])]),
            {
                "Vpc": out["Vpc"],
                "VpcCidr": out["VpcCidr"],
                "Subnets": out["Subnets"],
                "CertificateArn": params["CertificateArn"],
            },
            {"System": "convox", "Type": "app", "Rack": rack, "App": "myapp"},
            poll=0.05,
        )
        await ecs.register_task_definition(
            family=f"{rack}-myapp-web",
            containerDefinitions=[{"name": "web", "image": "busybox", "memory": 64}],
        )
        await ecs.create_service(
            cluster=out["Cluster"], serviceName=f"{rack}-myapp-web", taskDefinition=f"{rack}-myapp-web", desiredCount=2
        )
        await elb.create_target_group(Name=f"{rack}-extra", Protocol="HTTP", Port=80, VpcId=out["Vpc"])
        assert stacks.outputs(app)["WebBalancer"]


@pytest.mark.parametrize("form", list(CSV_FORMS))
def test_install_from_each_credentials_csv_then_params_then_uninstall_leaves_nothing(
    aws: MotoServer, tmp_path: Path, form: str
) -> None:
    credentials = tmp_path / "credentials.csv"
    credentials.write_bytes(CSV_FORMS[form].encode())
    config = tmp_path / "convox"
    before = asyncio.run(leftovers())

    done = convox(aws, config, "rack", "install", "aws", "--credentials", str(credentials), "InstanceCount=2")
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "CREATE_COMPLETE" in done.stderr  # progress from the stack's events
    url = next(line.split(" at ")[1] for line in done.stdout.splitlines() if "is installed at" in line)
    assert url.startswith("https://") and url.endswith(".elb.amazonaws.com")
    password = done.stdout.split("shown only this once:\n", 1)[1].splitlines()[0].strip()
    assert len(password) >= 30
    assert done.stdout.count(password) == 1  # printed once
    assert json.loads((config / "auth").read_text()) == {url: password}  # logged in
    assert (config / "host").read_text().strip() == url

    shown = convox(aws, config, "rack", "params")
    assert shown.returncode == 0, shown.stderr
    rows = param_rows(shown.stdout)
    assert rows["InstanceCount"] == "2"
    assert rows["InstanceType"] == "t3.small"
    assert rows["Ami"].startswith("ami-")
    assert password not in shown.stdout

    changed = convox(aws, config, "rack", "params", "set", "InstanceType=t3.medium", "Ami=ami-0123456789abcdef0")
    assert changed.returncode == 0, changed.stderr
    assert "UPDATE_COMPLETE" in changed.stderr
    assert "CREATE_COMPLETE" not in changed.stderr  # only this change's events
    rows = param_rows(convox(aws, config, "rack", "params").stdout)
    assert (rows["InstanceType"], rows["Ami"], rows["InstanceCount"]) == ("t3.medium", "ami-0123456789abcdef0", "2")

    asyncio.run(add_app_and_leaks("convox"))
    gone = convox(aws, config, "rack", "uninstall", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert asyncio.run(leftovers()) == before
    assert json.loads((config / "auth").read_text()) == {}
    assert not (config / "host").exists()


def test_uninstall_asks_before_deleting(aws: MotoServer, tmp_path: Path) -> None:
    config = tmp_path / "convox"
    assert convox(aws, config, "rack", "install", "aws", "--name", "r2").returncode == 0
    refused = convox(aws, config, "rack", "uninstall", "r2")
    assert refused.returncode == 1
    assert "pass --yes" in refused.stderr
    assert asyncio.run(leftovers()).get("stacks") == ["r2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["InstanceCounts=3"], "unknown rack parameter InstanceCounts"),
        (["CertificateArn=arn:aws:acm:x"], "set by the installer"),
        (["--name", "Bad_Name"], "invalid rack name"),
        (["InstanceCount"], "expected KEY=VALUE"),
    ],
)
def test_bad_install_input_is_refused_and_makes_nothing(
    aws: MotoServer, tmp_path: Path, args: list[str], message: str
) -> None:
    before = asyncio.run(leftovers())
    done = convox(aws, tmp_path / "convox", "rack", "install", "aws", *args)
    assert done.returncode == 1
    assert done.stderr.startswith("ERROR: ") and message in done.stderr
    assert asyncio.run(leftovers()) == before


def test_a_bad_credentials_file_is_refused_without_echoing_the_secret(aws: MotoServer, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.csv"
    credentials.write_text(f"Access key ID,Secret,Region\n{KEY},{SECRET},us-east-1\n")
    done = convox(aws, tmp_path / "convox", "rack", "install", "aws", "--credentials", str(credentials))
    assert done.returncode == 1
    assert "ERROR: " in done.stderr and "credentials.csv" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_a_second_rack_of_the_same_name_is_refused(aws: MotoServer, tmp_path: Path) -> None:
    config = tmp_path / "convox"
    assert convox(aws, config, "rack", "install", "aws").returncode == 0
    again = convox(aws, config, "rack", "install", "aws")
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_uninstall_refuses_a_stack_that_is_not_a_rack(aws: MotoServer, tmp_path: Path) -> None:
    template = "Resources:\n  Group:\n    Type: AWS::Logs::LogGroup\n    Properties:\n      LogGroupName: keep-me\n"

    async def create() -> None:
        async with session(None, "us-east-1").client("cloudformation") as cfn:
            await stacks.create(cfn, "someone-else", template, {}, {}, poll=0.05)

    asyncio.run(create())
    done = convox(aws, tmp_path / "convox", "rack", "uninstall", "someone-else", "--yes")
    assert done.returncode == 1
    assert "is not a rack" in done.stderr
    assert asyncio.run(leftovers()) == {"stacks": ["someone-else"], "log groups": ["keep-me"]}
    missing = convox(aws, tmp_path / "convox", "rack", "uninstall", "nothere", "--yes")
    assert missing.returncode == 1
    assert "no rack named nothere" in missing.stderr
