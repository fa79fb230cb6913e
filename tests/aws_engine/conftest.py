"""The aws provider against moto, with its tasks played as real containers on this host's Docker Engine.

Simulated (test doubles under tests/, never imported by the product):
- AWS: moto in server mode (tests/moto_server.py; the ``aws`` fixture), which runs no task;
- the ECS container agent of one container instance: tests/aws_engine/ecs_containers_double.py runs each
  task placed on it as a real container with the agent's labels, and registers the instance's engine address
  (``convox.engine``) as the agent would from ECS_INSTANCE_ATTRIBUTES;
- the instance's Docker Engine on 2376 with --tlsverify: tests/aws_engine/tls_front_double.py, a TLS front
  with the instances' certificate (made by the product's installer code) that admits only clients with a
  certificate of the rack's CA and forwards to this host's engine.
Everything between the provider and that front is the product's own code: the certificates in SSM, the
container-instance lookup, TLS with half-close, exec, stats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.provider.aws.certificate import EngineCertificates, engine_certificates, store_engine_certificates
from shared.provider.aws.provider import AwsProvider
from tests.aws_engine.ecs_containers_double import ContainerAgent
from tests.aws_engine.tls_front_double import TlsFront
from tests.conftest import RACK_NAME
from tests.moto_server import MotoServer

NAME = RACK_NAME


@dataclass
class EngineRack:
    provider: AwsProvider
    front: TlsFront
    agent: ContainerAgent
    certificates: EngineCertificates


@pytest.fixture
async def rack(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: str, busybox_image: str
) -> AsyncIterator[EngineRack]:
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    certificates = await asyncio.to_thread(engine_certificates, NAME)
    front = await TlsFront(certificates.ca, certificates.server_cert, certificates.server_key).start()
    agent: ContainerAgent | None = None
    try:
        async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path, name=NAME)) as provider:
            await store_engine_certificates(await provider.clients.get("ssm"), NAME, certificates)
            agent = await asyncio.to_thread(lambda: ContainerAgent(NAME, front.address).start())
            yield EngineRack(provider, front, agent, certificates)
            assert not agent.errors, agent.errors
    finally:
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        await front.close()
