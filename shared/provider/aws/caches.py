"""ElastiCache through its API (moto's CloudFormation has no ElastiCache types): the redis and memcached
backing services of :mod:`shared.provider.aws.resources`.

A cache has a security group of its own (its port, from the rack's security groups only), named for it and
tagged ``Rack=<rack> Type=resource``, and sits in the rack's cache subnet group ``<rack>-services`` (the
rack's subnets): a resource of the rack stack on AWS, made here when missing (a rack without a stack, or
moto, whose CloudFormation skips ElastiCache types; moto 5 cannot delete one either, so a group per cache
would leak one per service there). redis is a replication group of one node with an auth token and transit
and at-rest encryption; memcached a cache cluster of one node with no credentials (its security group is
its only guard, as for the local server). A delete asks for the cache to go, then deletes its security
group, retried while AWS says it is in use (until the cache is gone). moto 5 never finishes deleting a
cache (it stays ``deleting``) and lets the security group go at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import NotFound, RackError
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.settings import AwsProviderSettings

GONE = {
    "CacheClusterNotFound",
    "ReplicationGroupNotFoundFault",
    "InvalidGroup.NotFound",
    "DBInstanceNotFound",
}
BUSY = {"InvalidReplicationGroupState", "InvalidCacheClusterState"}
"""A delete already under way."""
IN_USE = {"DependencyViolation"}
"""A security group still used by a cache being deleted: deleted again a moment later."""


@dataclass(frozen=True)
class Network:
    """Where the rack's backing services live: its VPC and subnets, reachable from ``clients`` (security
    groups of the rack's instances and tasks) only."""

    vpc: str
    subnets: list[str]
    clients: list[str]


def gone(exc: BaseException) -> bool:
    """Whether an AWS error says the thing is not there (any more)."""
    return isinstance(exc, NotFound) or error_code(exc) in GONE


def endpoint(engine: str, found: dict[str, Any]) -> dict[str, Any]:
    """The address apps use: the redis primary, or memcached's configuration endpoint (else its first node)."""
    if engine == "redis":
        groups = found.get("NodeGroups") or [{}]
        return dict(groups[0].get("PrimaryEndpoint") or {})
    nodes = found.get("CacheNodes") or [{}]
    return dict(found.get("ConfigurationEndpoint") or nodes[0].get("Endpoint") or {})


class Caches:
    def __init__(self, clients: Clients, settings: AwsProviderSettings, rack: str) -> None:
        self.clients = clients
        self.settings = settings
        self.rack = rack
        self.subnet_group = f"{rack}-services"

    async def create(
        self,
        engine: str,
        ident: str,
        *,
        version: str,
        port: int,
        network: Network,
        password: str,
        tags: dict[str, str],
        group_name: str,
        on_group: Callable[[str], Awaitable[None]],
    ) -> tuple[str, int]:
        """Make the cache ``ident`` and wait until it is available; returns its endpoint. ``on_group`` is
        told the security group's id as soon as it exists (so that a create cut short can be undone)."""
        pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
        ec2, cache = await self.clients.get("ec2"), await self.clients.get("elasticache")
        with translated(f"cannot create the network of {engine} {ident}"):
            group = (
                await ec2.create_security_group(
                    GroupName=group_name,
                    VpcId=network.vpc,
                    Description=f"{group_name}: {engine} on port {port} from the rack only",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": pairs}],
                )
            )["GroupId"]
            await on_group(group)
            sources = [{"GroupId": g, "Description": "the rack's processes"} for g in network.clients]
            await ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "UserIdGroupPairs": sources}],
            )
            try:
                await cache.create_cache_subnet_group(
                    CacheSubnetGroupName=self.subnet_group,
                    SubnetIds=network.subnets,
                    CacheSubnetGroupDescription=f"{self.rack} backing services",
                    Tags=[{"Key": "System", "Value": "convox"}, {"Key": "Rack", "Value": self.rack}],
                )
            except Exception as exc:
                if error_code(exc) != "CacheSubnetGroupAlreadyExists":
                    raise
        common: dict[str, Any] = {
            "CacheNodeType": self.settings.cache_node_type,
            "Engine": engine,
            "EngineVersion": version,
            "CacheSubnetGroupName": self.subnet_group,
            "SecurityGroupIds": [group],
            "Port": port,
            "Tags": pairs,
        }
        with translated(f"cannot create {engine} {ident}"):
            if engine == "redis":
                await cache.create_replication_group(
                    ReplicationGroupId=ident,
                    ReplicationGroupDescription=group_name,
                    NumCacheClusters=1,
                    AuthToken=password,
                    TransitEncryptionEnabled=True,
                    AtRestEncryptionEnabled=True,
                    **common,
                )
            else:
                await cache.create_cache_cluster(CacheClusterId=ident, NumCacheNodes=1, **common)
        return await self.wait(engine, ident, port)

    async def describe(self, engine: str, ident: str) -> dict[str, Any] | None:
        """The replication group (redis) or cache cluster (memcached), None when there is none."""
        cache = await self.clients.get("elasticache")
        try:
            if engine == "redis":
                return dict((await cache.describe_replication_groups(ReplicationGroupId=ident))["ReplicationGroups"][0])
            found = await cache.describe_cache_clusters(CacheClusterId=ident, ShowCacheNodeInfo=True)
            return dict(found["CacheClusters"][0])
        except Exception as exc:
            if gone(exc):
                return None
            with translated(f"cannot read {engine} {ident}"):
                raise

    async def wait(self, engine: str, ident: str, port: int) -> tuple[str, int]:
        """Until the cache is ``available`` with an endpoint; its endpoint (moto 5 never gives memcached one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.resource_timeout
        while True:
            found = await self.describe(engine, ident)
            if found is None:
                raise RackError(f"{engine} {ident} disappeared while it was being created", status=502)
            status = str(found.get("Status") or found.get("CacheClusterStatus") or "").lower()
            where = endpoint(engine, found)
            if status == "available" and where.get("Address"):
                return str(where["Address"]), int(where.get("Port") or port)
            if "fail" in status:
                raise RackError(f"{engine} {ident} could not be created: {status}", status=502)
            if loop.time() > deadline:
                what = "is available but AWS gives it no endpoint" if status == "available" else f"is still {status}"
                raise RackError(f"{engine} {ident} {what} after {self.settings.resource_timeout:.0f}s", status=504)
            await asyncio.sleep(self.settings.resource_poll)

    async def statuses(self, engine: str) -> dict[str, str]:
        """Every cache of the engine's kind by id: its status, lowercased (one paged call)."""
        cache = await self.clients.get("elasticache")
        if engine == "redis":
            method, key, id_key, status_key = (
                "describe_replication_groups",
                "ReplicationGroups",
                "ReplicationGroupId",
                "Status",
            )
        else:
            method, key, id_key, status_key = (
                "describe_cache_clusters",
                "CacheClusters",
                "CacheClusterId",
                "CacheClusterStatus",
            )
        found: dict[str, str] = {}
        with translated("cannot read the rack's caches"):
            async for page in cache.get_paginator(method).paginate():
                for item in page.get(key, []):
                    if engine == "redis" or item.get("Engine") == engine:
                        found[str(item[id_key])] = str(item.get(status_key, "")).lower()
        return found

    async def delete(self, engine: str, ident: str, group: str, group_name: str) -> None:
        """The cache, then its security group (found by name when not recorded), retried while AWS says it is
        still in use (until the cache is gone, which takes minutes on AWS)."""
        cache, ec2 = await self.clients.get("elasticache"), await self.clients.get("ec2")
        found = await self.describe(engine, ident)
        if found is not None and str(found.get("Status") or found.get("CacheClusterStatus")).lower() != "deleting":
            try:
                if engine == "redis":
                    await cache.delete_replication_group(ReplicationGroupId=ident)
                else:
                    await cache.delete_cache_cluster(CacheClusterId=ident)
            except Exception as exc:
                if not gone(exc) and error_code(exc) not in BUSY:
                    with translated(f"cannot delete {engine} {ident}"):
                        raise
        for found_group in [group] if group else await self._groups(group_name):
            await self._until_free(
                functools.partial(ec2.delete_security_group, GroupId=found_group), f"security group {found_group}"
            )

    async def _groups(self, name: str) -> list[str]:
        ec2 = await self.clients.get("ec2")
        filters = [{"Name": "group-name", "Values": [name]}, {"Name": "tag:Rack", "Values": [self.rack]}]
        with translated(f"cannot read security group {name}"):
            found = (await ec2.describe_security_groups(Filters=filters))["SecurityGroups"]
        return [str(g["GroupId"]) for g in found]

    async def _until_free(self, call: Callable[[], Awaitable[Any]], what: str) -> None:
        """A delete, retried while what it deletes is in use; one of something already gone is done."""
        deadline = asyncio.get_running_loop().time() + self.settings.resource_timeout
        while True:
            try:
                await call()
                return
            except Exception as exc:
                if gone(exc):
                    return
                if error_code(exc) not in IN_USE or asyncio.get_running_loop().time() > deadline:
                    with translated(f"cannot delete {what}"):
                        raise
            await asyncio.sleep(self.settings.resource_poll)


async def remove_rack_caches(cache: Any, ec2: Any, rack: str, *, poll: float, limit: float = 3600.0) -> list[str]:
    """Every cache of the rack (tagged ``Rack=<rack>``) and the security groups of its backing services, for
    `convox rack uninstall` before the rack stack goes (on AWS a cache's network interfaces hold the rack's
    subnets until it is gone: its security group is deleted once they let go). Returns the caches' ids."""
    found: list[tuple[str, str, str]] = []
    for method, key, id_key, status_key in (
        ("describe_replication_groups", "ReplicationGroups", "ReplicationGroupId", "Status"),
        ("describe_cache_clusters", "CacheClusters", "CacheClusterId", "CacheClusterStatus"),
    ):
        async for page in cache.get_paginator(method).paginate():
            for item in page.get(key, []):
                if method == "describe_cache_clusters" and item.get("ReplicationGroupId"):
                    continue  # a member of a replication group: goes with it
                tags = (await cache.list_tags_for_resource(ResourceName=item["ARN"])).get("TagList", [])
                if {t["Key"]: t["Value"] for t in tags}.get("Rack") == rack:
                    found.append((method, str(item[id_key]), str(item.get(status_key, "")).lower()))
    for method, ident, status in found:
        if status == "deleting":
            continue
        try:
            if method == "describe_replication_groups":
                await cache.delete_replication_group(ReplicationGroupId=ident)
            else:
                await cache.delete_cache_cluster(CacheClusterId=ident)
        except Exception as exc:
            if not gone(exc) and error_code(exc) not in BUSY:
                raise
    filters = [{"Name": "tag:Rack", "Values": [rack]}, {"Name": "tag:Type", "Values": ["resource"]}]
    groups = (await ec2.describe_security_groups(Filters=filters))["SecurityGroups"]
    deadline = asyncio.get_running_loop().time() + limit
    for group in groups:
        while True:
            try:
                await ec2.delete_security_group(GroupId=group["GroupId"])
                break
            except Exception as exc:
                if gone(exc):
                    break
                if error_code(exc) not in IN_USE or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(poll)
    return [ident for _, ident, _ in found]
