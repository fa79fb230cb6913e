"""moto in server mode: a real HTTP AWS endpoint on a free loopback port, for this test session.

The session fails (never skips) when it cannot start. Between tests its state is reset and ECS tasks are
pinned to RUNNING (moto otherwise moves a task one state on at every describe). The server itself is the one
session fixture of tests/moto_server.py.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.moto_server import MotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: MotoServer) -> str:
    """The endpoint of the session's moto_server (tests/moto_server.py starts and stops it)."""
    return moto_server.url


def reset(endpoint: str) -> None:
    """Forget every resource, and keep ECS tasks RUNNING until stopped (no data plane moves them)."""
    httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    httpx.post(
        f"{endpoint}/moto-api/state-manager/set-transition",
        json={"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1_000_000_000}},
        timeout=10,
    ).raise_for_status()


def aws_environment(endpoint: str) -> dict[str, str]:
    """The standard AWS settings pointing every client at moto, with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def register_container_instance(cluster: str) -> str:
    """Test double: an EC2 instance registered in moto as a container instance of ``cluster`` so that
    EC2-launch RunTask places tasks. Nothing runs on it (moto has no data plane); returns its ARN."""
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    ecs = boto3.client("ecs", region_name=REGION)
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.large")
    instance_id = instance["Instances"][0]["InstanceId"]
    document = {"instanceId": instance_id, "region": REGION, "availabilityZone": f"{REGION}a", "accountId": ACCOUNT}
    registered = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=json.dumps(document))
    return str(registered["containerInstance"]["containerInstanceArn"])


def environ_without_aws() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
