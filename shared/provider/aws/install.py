"""``convox rack install aws`` and ``convox rack uninstall``: the rack stack and everything around it.

Install: check the name and parameters, look up the current ECS-optimized AMI unless ``Ami=`` is given,
write a generated password to an SSM SecureString (the stack and its task definition only name it),
make the TLS material of the instances' Docker Engines (a CA, the engines' certificate, the rack's client
certificate: SSM SecureStrings under ``/convox/<rack>/engine/``, read by the instances' UserData and by the
rack, never printed),
import a self-signed certificate into ACM for the TLS balancer, create the stack from
``cloudformation/rack.yml`` showing its events, and return the URL and password. A failure removes what
was made (the stack rolls back with ``OnFailure=DELETE``; the parameter and certificate are deleted here).

Uninstall: delete the rack's app and service stacks, then the rack stack, then what stack deletion leaves
behind (moto 5 leaks ECS clusters, services, task definitions and target groups; real AWS refuses to delete
a non-empty bucket or cluster): tasks are stopped, services deleted, the bucket emptied first.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import SecretStr

from shared.errors import BadRequest, Conflict, NotFound
from shared.models import Model
from shared.provider.aws import stacks
from shared.provider.aws.caches import remove_rack_caches
from shared.provider.aws.certificate import (
    ENGINE_SECRETS,
    engine_certificates,
    engine_path,
    self_signed,
    store_engine_certificates,
)
from shared.provider.aws.credentials import AwsCredentials, session
from shared.provider.aws.templates import rack_template

NAME = re.compile(r"^[a-z][a-z0-9-]{0,27}[a-z0-9]$")
AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
INSTALLER_OWNED = ("CertificateArn", "PasswordParameter")


class Installed(Model):
    name: str
    region: str
    url: str
    password: SecretStr
    certificate: str
    """The balancer's self-signed certificate (PEM), for the CLI to pin."""
    outputs: dict[str, str]


def password_parameter(name: str) -> str:
    return f"/convox/{name}/password"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadRequest(
            f"invalid rack name {name!r}: 2-29 lowercase letters, digits and dashes, starting with a letter"
        )
    return name


def check_params(params: dict[str, str]) -> dict[str, str]:
    declared = stacks.template_parameters(rack_template())
    unknown = sorted(set(params) - set(declared))
    if unknown:
        settable = ", ".join(k for k in declared if k not in INSTALLER_OWNED)
        raise BadRequest(f"unknown rack parameter {', '.join(unknown)} (known: {settable})")
    owned = sorted(set(params) & set(INSTALLER_OWNED))
    if owned:
        raise BadRequest(f"{', '.join(owned)} is set by the installer")
    return params


async def _region(sess: Any) -> str:
    region = sess.region_name
    if not region:
        raise BadRequest("no AWS region: pass --region or set AWS_REGION")
    return str(region)


async def install(
    name: str,
    params: dict[str, str],
    credentials: AwsCredentials | None = None,
    region: str | None = None,
    on_event: stacks.OnEvent | None = None,
    *,
    poll: float = stacks.POLL,
) -> Installed:
    check_name(name)
    check_params(params)
    sess = session(credentials, region)
    region = await _region(sess)
    async with sess.client("cloudformation") as cfn, sess.client("ssm") as ssm, sess.client("acm") as acm:
        if await stacks.describe(cfn, name) is not None:
            raise Conflict(f"a stack named {name} already exists in {region}: pick another --name")
        # Every parameter explicitly, defaults included: moto 5 treats a defaulted parameter as changed at the
        # first update and then loses every resource that refers to it (and AWS needs no UsePreviousValue).
        declared = stacks.template_parameters(rack_template())
        values = {k: str(d["Default"]) for k, d in declared.items() if "Default" in d}
        values.update(params)
        if not values.get("Ami"):
            try:
                values["Ami"] = (await ssm.get_parameter(Name=AMI_PARAMETER))["Parameter"]["Value"]
            except Exception:
                raise BadRequest(f"cannot look up the ECS-optimized AMI ({AMI_PARAMETER}): pass Ami=ami-...") from None
        password = secrets.token_urlsafe(30)
        await ssm.put_parameter(
            Name=password_parameter(name),
            Value=password,
            Type="SecureString",
            Overwrite=True,
            Description=f"The password of rack {name}",
        )
        certificate_arn: str | None = None
        try:
            # the instances' engines speak mutual TLS only: a CA, their certificate and the rack's, kept in SSM
            engines = await asyncio.to_thread(engine_certificates, name)
            await store_engine_certificates(ssm, name, engines)
            del engines
            cert = await asyncio.to_thread(self_signed, f"{name}.convox")
            certificate_arn = (
                await acm.import_certificate(
                    Certificate=cert.certificate.encode(),
                    PrivateKey=cert.key.encode(),
                    Tags=[{"Key": "Rack", "Value": name}, {"Key": "System", "Value": "convox"}],
                )
            )["CertificateArn"]
            values["CertificateArn"] = certificate_arn
            values["PasswordParameter"] = password_parameter(name)
            stack = await stacks.create(
                cfn,
                name,
                rack_template(),
                values,
                {"System": "convox", "Type": "rack", "Rack": name},
                on_event,
                poll=poll,
            )
        except BaseException:
            await _forget(ssm, acm, name, certificate_arn)
            raise
    out = stacks.outputs(stack)
    return Installed(
        name=name,
        region=region,
        url=out["Url"],
        password=SecretStr(password),
        certificate=cert.certificate,
        outputs=out,
    )


async def _forget(ssm: Any, acm: Any, name: str, certificate_arn: str | None) -> None:
    await _quietly(ssm.delete_parameter(Name=password_parameter(name)))
    await _quietly(ssm.delete_parameters(Names=[f"{engine_path(name)}/{key}" for key in ENGINE_SECRETS]))
    if certificate_arn:
        await _quietly(acm.delete_certificate(CertificateArn=certificate_arn))


async def _quietly(call: Awaitable[Any]) -> None:
    """A clean-up call whose target may already be gone."""
    try:
        await call
    except Exception as exc:
        if not any(word in str(exc) for word in ("NotFound", "not found", "does not exist", "NoSuch", "not exist")):
            raise


async def _paged(method: Callable[..., Awaitable[dict[str, Any]]], key: str, **kwargs: Any) -> list[Any]:
    """Every page of a list call (``nextToken``, ``NextToken`` or ``NextMarker``)."""
    found: list[Any] = []
    while True:
        page = await method(**kwargs)
        found += page.get(key, [])
        token = page.get("nextToken") or page.get("NextToken") or page.get("NextMarker")
        if not token:
            return found
        if "NextMarker" in page:
            kwargs["Marker"] = token
        elif "NextToken" in page:
            kwargs["NextToken"] = token
        else:
            kwargs["nextToken"] = token


async def rack_stacks(cfn: Any, name: str) -> list[dict[str, Any]]:
    """The stacks the rack made for its apps and services (tagged ``Rack=<name>``), not the rack's own."""
    found = await _paged(cfn.describe_stacks, "Stacks")
    return [
        s
        for s in found
        if s["StackStatus"] != "DELETE_COMPLETE"
        and s["StackName"] != name
        and {t["Key"]: t["Value"] for t in s.get("Tags", [])}.get("Rack") == name
    ]


async def uninstall(
    name: str,
    credentials: AwsCredentials | None = None,
    region: str | None = None,
    on_event: stacks.OnEvent | None = None,
    on_step: Callable[[str], None] | None = None,
    *,
    poll: float = stacks.POLL,
) -> None:
    """Remove the rack and everything it made."""
    check_name(name)
    step = on_step or (lambda _text: None)
    sess = session(credentials, region)
    await _region(sess)
    async with (
        sess.client("cloudformation") as cfn,
        sess.client("ecs") as ecs,
        sess.client("elbv2") as elb,
        sess.client("s3") as s3,
        sess.client("ssm") as ssm,
        sess.client("acm") as acm,
        sess.client("ecr") as ecr,
        sess.client("logs") as logs,
        sess.client("ec2") as ec2,
        sess.client("elasticache") as cache,
    ):
        rack = await stacks.describe(cfn, name)
        if rack is None:
            raise NotFound(f"no rack named {name} in this account and region")
        tags = {t["Key"]: t["Value"] for t in rack.get("Tags", [])}
        if tags.get("System") != "convox" or tags.get("Type") != "rack":
            raise BadRequest(f"stack {name} is not a rack (no System=convox, Type=rack tags); not touching it")
        out, params = stacks.outputs(rack), stacks.parameters(rack)
        cluster, vpc = out.get("Cluster", name), out.get("Vpc")

        step(f"Stopping the processes of cluster {cluster}")
        await _empty_cluster(ecs, cluster)
        for stack in await rack_stacks(cfn, name):
            step(f"Deleting stack {stack['StackName']}")
            await stacks.delete(cfn, stack["StackId"], on_event, poll=poll)
        step("Deleting the rack's caches (redis, memcached)")
        await remove_rack_caches(cache, ec2, name, poll=poll)
        if out.get("Settings"):
            step(f"Emptying bucket {out['Settings']}")
            await _empty_bucket(s3, out["Settings"])
        await _empty_repositories(ecr, name)
        step(f"Deleting stack {name}")
        try:
            await stacks.delete(cfn, rack["StackId"], on_event, poll=poll)
        except Exception as exc:
            # moto 5 deletes a stack's resources in no order and gives up on the VPC while its route table
            # and gateway are still there (DependencyViolation); on AWS the stack's own order prevents it.
            if "DependencyViolation" not in str(exc) or not vpc:
                raise
            step(f"Deleting network {vpc} (the stack left it)")
            await _delete_network(ec2, vpc)
            await stacks.delete(cfn, rack["StackId"], on_event, poll=poll)

        step("Removing what the stacks left behind")
        await _empty_cluster(ecs, cluster)
        await _quietly(ecs.delete_cluster(cluster=cluster))
        await _deregister_task_definitions(ecs, name)
        if vpc:
            await _delete_balancing(elb, vpc)
            await _delete_network(ec2, vpc)
        await _delete_repositories(ecr, name)
        await _delete_log_groups(logs, name)
        await _forget(ssm, acm, name, params.get("CertificateArn"))


async def _empty_cluster(ecs: Any, cluster: str) -> None:
    try:
        arns = await _paged(ecs.list_services, "serviceArns", cluster=cluster)
    except Exception as exc:
        if "ClusterNotFound" in str(exc) or "not found" in str(exc).lower():
            return
        raise
    for arn in arns:
        await _quietly(ecs.update_service(cluster=cluster, service=arn, desiredCount=0))
        await _quietly(ecs.delete_service(cluster=cluster, service=arn, force=True))
    for status in ("RUNNING", "PENDING"):
        for task in await _paged(ecs.list_tasks, "taskArns", cluster=cluster, desiredStatus=status):
            await _quietly(ecs.stop_task(cluster=cluster, task=task, reason="rack uninstall"))
    for instance in await _paged(ecs.list_container_instances, "containerInstanceArns", cluster=cluster):
        await _quietly(ecs.deregister_container_instance(cluster=cluster, containerInstance=instance, force=True))


async def _deregister_task_definitions(ecs: Any, name: str) -> None:
    """Every ACTIVE revision of the rack's families (``<rack>-*``: the API's and its apps')."""
    families = await _paged(ecs.list_task_definition_families, "families", familyPrefix=f"{name}-", status="ACTIVE")
    for family in families:
        if not family.startswith(f"{name}-"):
            continue
        arns = await _paged(ecs.list_task_definitions, "taskDefinitionArns", familyPrefix=family, status="ACTIVE")
        for arn in arns:
            await _quietly(ecs.deregister_task_definition(taskDefinition=arn))


async def _delete_balancing(elb: Any, vpc: str) -> None:
    """Balancers and target groups left in the rack's VPC (the VPC is the rack's, so everything in it is)."""
    balancers = await _paged(elb.describe_load_balancers, "LoadBalancers")
    for lb in balancers:
        if lb.get("VpcId") == vpc:
            await _quietly(elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"]))
    groups = await _paged(elb.describe_target_groups, "TargetGroups")
    for group in groups:
        if group.get("VpcId") == vpc:
            await _quietly(elb.delete_target_group(TargetGroupArn=group["TargetGroupArn"]))


async def _empty_bucket(s3: Any, bucket: str) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket}
    while True:
        try:
            page = await s3.list_object_versions(**kwargs)
        except Exception as exc:
            if "NoSuchBucket" in str(exc):
                return
            raise
        versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
        for start in range(0, len(doomed), 1000):
            await s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000], "Quiet": True})
        if not page.get("IsTruncated"):
            return
        kwargs = {"Bucket": bucket, "KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}


async def _repositories(ecr: Any, name: str) -> list[str]:
    repos = await _paged(ecr.describe_repositories, "repositories")
    return [r["repositoryName"] for r in repos if r["repositoryName"].startswith(f"{name}/")]


async def _empty_repositories(ecr: Any, name: str) -> None:
    for repo in await _repositories(ecr, name):
        images = await _paged(ecr.list_images, "imageIds", repositoryName=repo)
        for start in range(0, len(images), 100):
            await _quietly(ecr.batch_delete_image(repositoryName=repo, imageIds=images[start : start + 100]))


async def _delete_repositories(ecr: Any, name: str) -> None:
    for repo in await _repositories(ecr, name):
        await _quietly(ecr.delete_repository(repositoryName=repo, force=True))


async def _delete_log_groups(logs: Any, name: str) -> None:
    groups = await _paged(logs.describe_log_groups, "logGroups", logGroupNamePrefix=f"/convox/{name}")
    for group in groups:
        group_name = group["logGroupName"]
        if group_name == f"/convox/{name}" or group_name.startswith(f"/convox/{name}/"):
            await _quietly(logs.delete_log_group(logGroupName=group_name))


async def _delete_network(ec2: Any, vpc: str) -> None:
    """The rack's VPC and what is in it, when the stack could not delete it (a no-op once it is gone)."""
    found = await _paged(ec2.describe_vpcs, "Vpcs", Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    if not found:
        return
    by_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
    for eni in await _paged(ec2.describe_network_interfaces, "NetworkInterfaces", Filters=by_vpc):
        if eni.get("Status") == "available":
            await _quietly(ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"]))
    for subnet in await _paged(ec2.describe_subnets, "Subnets", Filters=by_vpc):
        await _quietly(ec2.delete_subnet(SubnetId=subnet["SubnetId"]))
    attached = [{"Name": "attachment.vpc-id", "Values": [vpc]}]
    for gateway in await _paged(ec2.describe_internet_gateways, "InternetGateways", Filters=attached):
        await _quietly(ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc))
        await _quietly(ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"]))
    for table in await _paged(ec2.describe_route_tables, "RouteTables", Filters=by_vpc):
        if not any(a.get("Main") for a in table.get("Associations", [])):
            await _quietly(ec2.delete_route_table(RouteTableId=table["RouteTableId"]))
    for group in await _paged(ec2.describe_security_groups, "SecurityGroups", Filters=by_vpc):
        if group["GroupName"] != "default":
            await _quietly(ec2.delete_security_group(GroupId=group["GroupId"]))
    await _quietly(ec2.delete_vpc(VpcId=vpc))
