"""Every template the rack renders passes cfn-lint with no error, and holds what the issue asks for.

Nothing is simulated in the lint tests (cfn-lint's bundled schemas, offline). The app stack is also
created on moto (simulated AWS) to show the outputs the provider reads.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from shared.provider.aws import stacks
from shared.provider.aws.certificate import self_signed
from shared.provider.aws.credentials import session
from shared.provider.aws.resource_kinds import KINDS
from shared.provider.aws.templates import (
    PortMap,
    ProcessPorts,
    app_template,
    logical_id,
    rack_template,
    resource_template,
)
from tests.moto_server import MotoServer

CERT = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
SHAPES: dict[str, list[ProcessPorts]] = {
    "no processes": [],
    "worker only": [ProcessPorts(name="worker")],
    "one public port": [ProcessPorts(name="web", public=[PortMap(port=80, container=3000)])],
    "public and internal": [
        ProcessPorts(
            name="web-api",
            public=[PortMap(port=80, container=3000), PortMap(port=443, container=3001)],
            internal=[PortMap(port=9000, container=9000)],
        ),
        ProcessPorts(name="cache", internal=[PortMap(port=6379, container=6379)]),
        ProcessPorts(name="worker"),
    ],
}


def lint_errors(template: str) -> list[str]:
    from cfnlint.api import ManualArgs, lint

    matches = lint(template, config=ManualArgs(regions=["us-east-1"]))
    return [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches if m.rule.id.startswith("E")]


def resources(template: str) -> dict[str, Any]:
    data = yaml.load(template, Loader=stacks.TemplateLoader)
    return dict(data["Resources"])


def test_rack_template_passes_cfn_lint() -> None:
    assert lint_errors(rack_template()) == []


@pytest.mark.parametrize("shape", list(SHAPES))
def test_app_template_passes_cfn_lint(shape: str) -> None:
    assert lint_errors(app_template("convox", "myapp", SHAPES[shape])) == []


@pytest.mark.parametrize("kind", [k for k in KINDS.values() if k.service == "rds"], ids=lambda k: k.name)
def test_resource_template_passes_cfn_lint_for_each_database(kind: Any) -> None:
    clients = ["sg-0123456789abcdef0", "sg-0fedcba9876543210"]
    template = resource_template("convox", "db", kind.engine, kind.version, kind.port, clients)
    assert lint_errors(template) == []
    found = resources(template)
    rules = found["Security"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["SourceSecurityGroupId"]) for r in rules] == [(kind.port, g) for g in clients]
    assert not any("CidrIp" in r for r in rules)  # from the rack's security groups only, never an address range
    instance = found["Instance"]["Properties"]
    assert (instance["Engine"], instance["Port"], instance["StorageEncrypted"], instance["PubliclyAccessible"]) == (
        kind.engine,
        str(kind.port),
        True,
        False,
    )
    assert stacks.template_parameters(template)["MasterPassword"]["NoEcho"] is True


def test_cfn_lint_catches_a_broken_template() -> None:
    broken = app_template("convox", "myapp", SHAPES["one public port"]).replace("Protocol: HTTP", "Protocol: HTTPX")
    assert any(e.startswith("E") for e in lint_errors(broken))


def test_rack_template_has_the_parameters_and_parts_the_rack_needs() -> None:
    declared = stacks.template_parameters(rack_template())
    assert {"Ami", "InstanceType", "InstanceCount"} <= set(declared)
    assert declared["InstanceType"]["Default"] == "t3.small"
    found = resources(rack_template())
    types = {r["Type"] for r in found.values()}
    assert {
        "AWS::EC2::VPC",
        "AWS::ECS::Cluster",
        "AWS::AutoScaling::AutoScalingGroup",
        "AWS::DynamoDB::Table",
        "AWS::S3::Bucket",
        "AWS::Logs::LogGroup",
        "AWS::ECR::Repository",
        "AWS::IAM::Role",
        "AWS::ECS::Service",
    } <= types
    assert sum(r["Type"] == "AWS::EC2::Subnet" for r in found.values()) == 3
    rules = found["InstancesSecurity"]["Properties"]["SecurityGroupIngress"]
    assert sorted(r["IpProtocol"] for r in rules) == ["tcp", "tcp", "udp"]
    assert all(r["CidrIp"] is None for r in rules)  # a !Ref to VpcCidr: inside the VPC only, never 0.0.0.0/0
    assert found["ApiListener"]["Properties"]["Protocol"] == "HTTPS"


def test_the_instances_engines_listen_with_mutual_tls_reachable_from_the_rack_security_group_only() -> None:
    found = resources(rack_template())
    rules = found["InstancesSecurity"]["Properties"]["SecurityGroupIngress"]
    tcp = [(r["FromPort"], r["ToPort"]) for r in rules if r["IpProtocol"] == "tcp"]
    assert all(not low <= 2376 <= high for low, high in tcp)  # the VPC-wide rules leave the engine's port out
    engine = found["EngineFromInstances"]["Properties"]
    assert (engine["FromPort"], engine["ToPort"], engine["IpProtocol"]) == (2376, 2376, "tcp")
    assert "CidrIp" not in engine and engine["SourceSecurityGroupId"] == engine["GroupId"]
    user_data = rack_template().split("UserData:", 1)[1].split("\n  Instances:", 1)[0]  # (a !Sub: read as text)
    assert "--tlsverify" in user_data and "tcp://0.0.0.0:2376" in user_data
    assert "client-key" not in user_data and "set -x" not in user_data
    text = rack_template()
    instance_reads = text.split("\n  InstanceRole:", 1)[1].split("\n  InstanceProfile:", 1)[0]
    assert "server-key" in instance_reads and "client-key" not in instance_reads  # an instance is no client
    api_reads = text.split("\n  ApiRole:", 1)[1].split("\n  ApiTasks:", 1)[0]
    assert "client-key" in api_reads and "server-key" not in api_reads


def test_app_template_has_a_balancer_only_for_public_ports_and_one_listener_per_port() -> None:
    found = resources(app_template("convox", "myapp", SHAPES["public and internal"]))
    balancers = {k: r for k, r in found.items() if r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer"}
    assert {k: b["Properties"]["Scheme"] for k, b in balancers.items()} == {
        "WebApiBalancer": "internet-facing",
        "WebApiInternal": "internal",
        "CacheInternal": "internal",
    }
    listeners = {k: r["Properties"]["Port"] for k, r in found.items() if r["Type"].endswith("::Listener")}
    assert listeners == {
        "WebApiPort80Listener": 80,
        "WebApiPort443Listener": 443,
        "WebApiInternal9000Listener": 9000,
        "CacheInternal6379Listener": 6379,
    }
    assert not any(k.startswith("Worker") for k in found)
    assert {"LogGroup", "Repository", "ProcessSecurity"} <= set(found)
    worker_only = resources(app_template("convox", "myapp", SHAPES["worker only"]))
    assert not any(r["Type"].startswith("AWS::ElasticLoadBalancingV2") for r in worker_only.values())


def test_process_names_that_collide_as_logical_ids_are_refused() -> None:
    assert logical_id("web-api") == "WebApi"
    with pytest.raises(ValueError, match="collide"):
        app_template("convox", "myapp", [ProcessPorts(name="web-api"), ProcessPorts(name="web--api")])


async def test_app_stack_creates_on_moto_with_the_outputs_the_provider_reads(aws: MotoServer) -> None:
    sess = session(None, "us-east-1")
    pem = self_signed("test.convox")
    async with sess.client("ec2") as ec2, sess.client("cloudformation") as cfn, sess.client("acm") as acm:
        cert = (await acm.import_certificate(Certificate=pem.certificate.encode(), PrivateKey=pem.key.encode()))[
            "CertificateArn"
        ]
        vpc = (await ec2.create_vpc(CidrBlock="10.1.0.0/16"))["Vpc"]["VpcId"]
        subnets = [
            (await ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{i}.0/24", AvailabilityZone=f"us-east-1{z}"))[
                "Subnet"
            ]["SubnetId"]
            for i, z in enumerate("ab")
        ]
        stack = await stacks.create(
            cfn,
            "convox-myapp",
            app_template("convox", "myapp", SHAPES["public and internal"]),
            {"Vpc": vpc, "VpcCidr": "10.1.0.0/16", "Subnets": ",".join(subnets), "CertificateArn": cert},
            {"System": "convox", "Type": "app", "Rack": "convox", "App": "myapp"},
            poll=0.05,
        )
    out = stacks.outputs(stack)
    assert out["LogGroup"] == "/convox/convox/myapp"
    assert out["Repository"].endswith("/convox/myapp")
    assert out["WebApiBalancer"].endswith(".elb.amazonaws.com")
    assert out["WebApiPort80Targets"].startswith("arn:aws:elasticloadbalancing:")
    assert "CacheInternal6379Targets" in out
