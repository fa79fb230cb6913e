"""RDS through CloudFormation: the postgres, mysql and mariadb backing services of
:mod:`shared.provider.aws.resources` (redis and memcached are :mod:`shared.provider.aws.caches`).

A database is one stack ``<rack>-resource-<NAME>`` from ``cloudformation/resource-rds.yml`` (a security
group, a DB subnet group, an encrypted DB instance with its ``Port`` and ``EngineVersion`` explicit), its
master password a ``NoEcho`` parameter. Its endpoint is the stack's outputs; the DB instance's id (what its
live status is read by) is the physical id of the stack's ``Instance`` resource.
"""

from __future__ import annotations

from typing import Any

from shared.errors import RackError
from shared.provider.aws import stacks
from shared.provider.aws.caches import Network
from shared.provider.aws.clients import Clients, translated
from shared.provider.aws.resource_kinds import Kind
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.aws.state import Item
from shared.provider.aws.templates import resource_template


def made(stack: dict[str, Any], instance: dict[str, Any]) -> Item:
    """What a complete RDS stack made: the endpoint (its outputs) and the DB instance's id."""
    out = stacks.outputs(stack)
    physical = str(instance["StackResourceDetail"]["PhysicalResourceId"])
    return {"host": out["Address"], "port": int(out["Port"]), "instance": physical}


class Databases:
    def __init__(self, clients: Clients, settings: AwsProviderSettings, rack: str) -> None:
        self.clients = clients
        self.settings = settings
        self.rack = rack

    async def create(
        self, name: str, stack_name: str, kind: Kind, network: Network, password: str, tags: dict[str, str]
    ) -> Item:
        """Make the database ``name`` (its stack ``stack_name``) and wait until it is complete: what it made."""
        cfn = await self.clients.get("cloudformation")
        template = resource_template(self.rack, name, kind.engine, kind.version, kind.port, network.clients)
        params = {
            "Vpc": network.vpc,
            "Subnets": ",".join(network.subnets),
            "MasterUsername": kind.username,
            "MasterPassword": password,
            "DatabaseName": kind.database,
            "InstanceClass": self.settings.db_instance_class,
            "Storage": str(self.settings.db_storage),
        }
        try:
            with translated(f"cannot create the stack of service {name}"):
                stack = await stacks.create(cfn, stack_name, template, params, tags, poll=self.settings.resource_poll)
                instance = await cfn.describe_stack_resource(StackName=stack["StackId"], LogicalResourceId="Instance")
        except stacks.StackError as exc:
            raise RackError(f"{kind.name} {name}: {exc}", status=502) from None
        return made(stack, instance)

    async def wait(self, name: str, stack_name: str, kind: Kind) -> Item:
        """What the stack AWS goes on making (or made) of the database made, once it is done; a RackError when
        there is no such stack or it failed."""
        cfn = await self.clients.get("cloudformation")
        with translated(f"cannot read the stack of service {name}"):
            stack = await stacks.wait(cfn, stack_name, poll=self.settings.resource_poll)
            if stack is None:
                raise RackError(f"{kind.name} {name} was being created when its process stopped")
            instance = await cfn.describe_stack_resource(StackName=stack["StackId"], LogicalResourceId="Instance")
        return made(stack, instance)

    async def statuses(self) -> dict[str, str]:
        """The status of each of the account's DB instances, by id (lower case), in one paged call."""
        rds = await self.clients.get("rds")
        statuses: dict[str, str] = {}
        with translated("cannot read the rack's databases"):
            async for page in rds.get_paginator("describe_db_instances").paginate():
                for db in page.get("DBInstances", []):
                    statuses[str(db["DBInstanceIdentifier"])] = str(db.get("DBInstanceStatus", "")).lower()
        return statuses

    async def delete(self, name: str, stack_name: str, kind: Kind) -> None:
        """Delete the database's stack (and wait until it is gone)."""
        cfn = await self.clients.get("cloudformation")
        try:
            with translated(f"cannot delete the stack of service {name}"):
                await stacks.delete(cfn, stack_name, poll=self.settings.resource_poll)
        except stacks.StackError as exc:
            raise RackError(f"{kind.name} {name}: {exc}", status=502) from None
