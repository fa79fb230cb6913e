"""Helpers of the aws tests: moto's own view of what the provider made (boto3, read-only), and the test
double of the builder (moto runs no task: the test reports the build's images as the builder would)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared.manifest import BuildSpec, Manifest, Service
from shared.models import Build, BuildOptions
from shared.provider import Provider
from shared.provider.aws.builds import AwsBuilds
from tests.conftest import RACK_NAME
from tests.contract.moto_server import REGION
from tests.sources import stored_source

ECR = f"123456789012.dkr.ecr.{REGION}.amazonaws.com"


def manifest() -> Manifest:
    return Manifest(
        services={
            "web": Service(name="web", build=BuildSpec(), port=3000, command="python -m http.server 3000"),
            "worker": Service(name="worker", build=BuildSpec(), command=["sleep", "infinity"]),
        }
    )


def builds_of(provider: Provider) -> AwsBuilds:
    assert isinstance(provider.builds, AwsBuilds)
    return provider.builds


async def play_builder(
    provider: Provider, app: str, tmp_path: Path, tag: str = "1", built: Manifest | None = None
) -> Build:
    """Test double of the builder task: a build is made through the provider (its source goes to S3, its
    task is placed in moto), then finished with the ECR images the builder would have pushed."""
    source = tmp_path / f"source-{tag}"
    source.mkdir()
    (source / "Dockerfile").write_text("FROM busybox\n")
    built = built or manifest()
    key = await stored_source(provider.objects, app, source)
    build = await provider.builds.create(app, key, built, BuildOptions(description=f"build {tag}"))
    images = {name: f"{ECR}/{RACK_NAME}/{app}:{name}.{build.id.lower()}" for name in built.services}
    return await builds_of(provider).finish(app, build.id, images)


def boto(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


async def in_moto(service: str, method: str, **kwargs: Any) -> Any:
    """One call to moto through boto3, in a thread: what AWS itself holds."""
    return await asyncio.to_thread(lambda: getattr(boto(service), method)(**kwargs))


def rack_network(cidr: str = "10.9.0.0/16") -> tuple[list[str], str]:
    """Test double of the rack stack's network: a VPC with two subnets in two zones and the instances'
    security group, made in moto. Returns (subnets, instances security group)."""
    ec2 = boto("ec2")
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    base = cidr.rsplit(".", 2)[0]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"{base}.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate("ab")
    ]
    group = ec2.create_security_group(GroupName="instances", Description="the rack's instances", VpcId=vpc)
    return subnets, str(group["GroupId"])


def use_rack_network(monkeypatch: Any) -> tuple[list[str], str]:
    """:func:`rack_network`, named to the aws provider by its settings (as a rack without a stack is)."""
    import json

    subnets, group = rack_network()
    monkeypatch.setenv("RACK_AWS_SUBNETS", json.dumps(subnets))
    monkeypatch.setenv("RACK_AWS_SECURITY_GROUPS", json.dumps([group]))
    monkeypatch.setenv("RACK_AWS_RESOURCE_POLL", "0.05")
    return subnets, group
