"""The aws provider's access to its instances' Docker Engines, without an engine: the TLS material made at
install (in moto's SSM), and the refusals that need no engine (FARGATE tasks, a FARGATE rack).
Simulated: AWS (moto in server mode); nothing runs on moto (no container, no engine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.config import RackSettings
from shared.errors import BadRequest
from shared.models import ProcessRunOptions
from shared.provider.aws.certificate import (
    ENGINE_SECRETS,
    engine_certificates,
    engine_path,
    read_engine_secrets,
    store_engine_certificates,
)
from shared.provider.aws.processes import pid_of
from shared.provider.aws.provider import AwsProvider
from shared.provider.aws.settings import AwsProviderSettings
from tests.moto_server import MotoServer

RACK = "enginerack"


@pytest.fixture
async def provider(aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AwsProvider]:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK)) as opened:
        yield opened


def test_the_engine_certificates_chain_to_the_racks_ca_for_their_one_purpose() -> None:
    made = engine_certificates(RACK)
    ca = x509.load_pem_x509_certificate(made.ca.encode())
    server = x509.load_pem_x509_certificate(made.server_cert.encode())
    client = x509.load_pem_x509_certificate(made.client_cert.encode())
    for cert in (server, client):
        cert.verify_directly_issued_by(ca)
    usage = {
        name: list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        for name, c in (("server", server), ("client", client))
    }
    assert usage == {"server": [ExtendedKeyUsageOID.SERVER_AUTH], "client": [ExtendedKeyUsageOID.CLIENT_AUTH]}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other = engine_certificates(RACK)
    assert other.ca != made.ca  # one CA per rack (per install), never a shared one


async def test_the_engine_material_is_kept_as_secure_strings_and_read_back(provider: AwsProvider) -> None:
    made = await asyncio.to_thread(engine_certificates, RACK)
    ssm = await provider.clients.get("ssm")
    await store_engine_certificates(ssm, RACK, made)
    found = (await ssm.describe_parameters())["Parameters"]
    kinds = {p["Name"]: p["Type"] for p in found if p["Name"].startswith(engine_path(RACK))}
    assert kinds == {f"{engine_path(RACK)}/{key}": "SecureString" for key in ENGINE_SECRETS}
    read = await read_engine_secrets(ssm, RACK)
    assert read == {"ca": made.ca, "client-cert": made.client_cert, "client-key": made.client_key}
    assert (await provider.processes.engines.context()) is not None  # a client context from them


async def fargate_task(provider: AwsProvider, app: str) -> str:
    """A FARGATE task of ``app`` in moto (a task record, tagged as the provider tags its one-offs)."""
    ec2 = await provider.clients.get("ec2")
    ecs = await provider.clients.get("ecs")
    vpc = (await ec2.create_vpc(CidrBlock="10.7.0.0/16"))["Vpc"]["VpcId"]
    await ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's awsvpc ENIs need it
    subnet = (await ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24"))["Subnet"]["SubnetId"]
    group = (await ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc))["GroupId"]
    definition = await ecs.register_task_definition(
        family=f"{RACK}-{app}-web",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[{"name": "web", "image": "busybox", "memory": 128, "command": ["sleep", "60"]}],
    )
    ran = await ecs.run_task(
        cluster=RACK,
        taskDefinition=definition["taskDefinition"]["taskDefinitionArn"],
        launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
        tags=[{"key": "convox.rack", "value": RACK}, {"key": "convox.app", "value": app}],
    )
    return pid_of(ran["tasks"][0]["taskArn"])


async def test_exec_into_a_fargate_task_is_refused_naming_the_launch_type(provider: AwsProvider) -> None:
    await provider.apps.create("farg")
    pid = await fargate_task(provider, "farg")
    with pytest.raises(BadRequest, match="FARGATE"):
        await provider.processes.exec("farg", pid, ["sh"])
    listed = await provider.processes.list("farg")  # its CPU/MEM cannot be had: 0, and the listing works
    assert [(p.id, p.cpu, p.memory) for p in listed] == [(pid, 0.0, 0.0)]


async def test_an_attached_run_on_a_fargate_rack_is_refused_naming_the_launch_type(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    settings = AwsProviderSettings(launch_type="FARGATE")
    async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=RACK), settings) as provider:
        await provider.apps.create("fargrun")
        with pytest.raises(BadRequest, match="FARGATE"):
            await provider.processes.run_interactive(
                "fargrun", ProcessRunOptions(service="web", image="busybox", command=["sh"])
            )
