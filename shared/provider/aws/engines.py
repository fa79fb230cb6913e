"""The container instances' Docker Engines, reached over mutual TLS, and a task's container on its engine.

A task (EC2 launch type) runs on a container instance: ``DescribeTasks`` gives its ``containerInstanceArn``,
``DescribeContainerInstances`` the EC2 instance, and ``DescribeInstances`` its private address; its engine
listens there on 2376 (the rack stack's UserData), with the engines' certificate of the rack's CA, and accepts
the rack's client certificate only (both made at install, kept in SSM: :mod:`.certificate`).

An instance may name its engine's address itself with the container-instance attribute ``convox.engine``
(``HOST:PORT``; the ECS agent registers it from ``ECS_INSTANCE_ATTRIBUTES``): it takes precedence over the
private address. The TLS check is the same either way (the rack's CA), so the attribute cannot point the
rack at an engine that is not the rack's. The tests' ECS agent double uses it to put its TLS front in front
of the local engine.

The container is found by the labels the ECS agent puts on every container it runs:
``com.amazonaws.ecs.task-arn`` and ``com.amazonaws.ecs.container-name``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from shared.errors import BadRequest, NotFound, Unavailable
from shared.provider.aws.certificate import ENGINE_PORT, read_engine_secrets
from shared.provider.aws.clients import Clients, translated
from shared.provider.engine.docker import Engine
from shared.provider.engine.stats import Sampler
from shared.provider.engine.tls import client_context

ENGINE_ATTRIBUTE = "convox.engine"
LABEL_TASK = "com.amazonaws.ecs.task-arn"
LABEL_CONTAINER = "com.amazonaws.ecs.container-name"


class Engines:
    """One engine client per instance address, the TLS context made once, and the addresses remembered per
    container instance (an instance does not move)."""

    def __init__(self, clients: Clients, cluster: str, stack: str, timeout: float = 30.0) -> None:
        self.clients = clients
        self.cluster = cluster
        self.stack = stack
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._lock = asyncio.Lock()
        self._engines: dict[str, Engine] = {}
        self._samplers: dict[str, Sampler] = {}
        self._addresses: dict[str, str] = {}
        self._hosts: dict[str, str] = {}

    async def context(self) -> ssl.SSLContext:
        async with self._lock:
            if self._context is None:
                ssm = await self.clients.get("ssm")
                with translated(f"cannot read the rack's engine certificates ({self.stack})"):
                    pieces = await read_engine_secrets(ssm, self.stack)
                self._context = await asyncio.to_thread(
                    client_context, pieces["ca"], pieces["client-cert"], pieces["client-key"]
                )
                del pieces
            return self._context

    async def addresses(self, instance_arns: list[str]) -> dict[str, str]:
        """``HOST:PORT`` of the engine of each container instance (batched: 100 per describe)."""
        await self._describe([a for a in instance_arns if a and a not in self._addresses])
        return {a: self._addresses[a] for a in instance_arns if a in self._addresses}

    async def hosts(self, instance_arns: list[str]) -> dict[str, str]:
        """The private address of each container instance (`convox ps`'s host), remembered."""
        await self._describe([a for a in instance_arns if a and a not in self._hosts])
        return {a: self._hosts[a] for a in instance_arns if a in self._hosts}

    async def _describe(self, arns: list[str]) -> None:
        missing = sorted(set(arns))
        if not missing:
            return
        ecs = await self.clients.get("ecs")
        instances: list[dict[str, Any]] = []
        with translated("cannot describe the rack's container instances"):
            for start in range(0, len(missing), 100):
                described = await ecs.describe_container_instances(
                    cluster=self.cluster, containerInstances=missing[start : start + 100]
                )
                instances.extend(described.get("containerInstances", []))
        by_ec2: dict[str, str] = {}
        for instance in instances:
            attributes = {a.get("name"): a.get("value") for a in instance.get("attributes", [])}
            named = attributes.get(ENGINE_ATTRIBUTE)
            if named:
                self._addresses[instance["containerInstanceArn"]] = str(named)
            if instance.get("ec2InstanceId"):
                by_ec2[str(instance["ec2InstanceId"])] = instance["containerInstanceArn"]
        if by_ec2:
            ec2 = await self.clients.get("ec2")
            with translated("cannot describe the rack's instances"):
                reservations = (await ec2.describe_instances(InstanceIds=sorted(by_ec2)))["Reservations"]
            for reservation in reservations:
                for ec2_instance in reservation.get("Instances", []):
                    ip = ec2_instance.get("PrivateIpAddress")
                    arn = by_ec2.get(ec2_instance.get("InstanceId", ""))
                    if ip and arn:
                        self._hosts[arn] = str(ip)
                        self._addresses.setdefault(arn, f"{ip}:{ENGINE_PORT}")

    async def engine(self, address: str) -> Engine:
        engine = self._engines.get(address)
        if engine is None:
            engine = Engine(f"https://{address}", timeout=self.timeout, tls=await self.context())
            self._engines[address] = engine
        return engine

    async def sampler(self, address: str) -> Sampler:
        sampler = self._samplers.get(address)
        if sampler is None:
            sampler = Sampler(await self.engine(address), local=False)
            self._samplers[address] = sampler
        return sampler

    async def address_of(self, task: dict[str, Any], pid: str) -> str:
        if task.get("launchType") == "FARGATE":
            raise BadRequest(
                f"process {pid} runs on the FARGATE launch type, which has no container instance with an "
                "engine for the rack to reach: exec, attached runs and live CPU/MEM need LaunchType=EC2"
            )
        arn = str(task.get("containerInstanceArn") or "")
        if not arn:
            raise Unavailable(f"process {pid} is not placed on a container instance yet")
        address = (await self.addresses([arn])).get(arn)
        if not address:
            raise Unavailable(f"the container instance of process {pid} has no address")
        return address

    async def container(self, task: dict[str, Any], pid: str) -> tuple[Engine, str]:
        """The engine of the task's instance and its container's id there (the task's first container)."""
        engine = await self.engine(await self.address_of(task, pid))
        return engine, await self.container_on(engine, task, pid)

    async def container_on(self, engine: Engine, task: dict[str, Any], pid: str) -> str:
        name = ((task.get("containers") or [{}])[0]).get("name") or ""
        labels = {LABEL_TASK: str(task["taskArn"])}
        if name:
            labels[LABEL_CONTAINER] = str(name)
        found = [c for c in await engine.containers(labels) if (c.get("State") or "running") == "running"]
        if not found:
            raise NotFound(f"process {pid}: its container is not running on its instance")
        return str(found[0]["Id"])

    async def close(self) -> None:
        for sampler in self._samplers.values():
            await sampler.close()
        for engine in self._engines.values():
            await engine.close()
        self._samplers.clear()
        self._engines.clear()
