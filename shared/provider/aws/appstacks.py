"""Each app's own stack (``cloudformation/app.yml``): its log group, image repository and security groups, and
a balancer only for the process types with public ports (internal ports: an internal balancer, no public
listener).

The stack is ``<rack>-app-<app>`` (the ``app-`` keeps it apart from backing services' ``<rack>-resource-<NAME>``
whatever the names), tagged ``System=convox``, ``Rack``, ``Type=app``, ``App`` (so that `convox rack uninstall`
finds it). It is created with the app, without waiting (the app is ``creating`` while CloudFormation works),
updated by a promote whose release changes the balancers (waiting, since the services need the target
groups), and deleted with the app. Task definitions and services stay the provider's, through the ECS API.

The rack's network (VPC, its CIDR, subnets) and its TLS certificate come from the rack stack's outputs and
parameters (``RACK_AWS_VPC``...); a bootstrapped rack (no rack stack: tests, a first try) makes a network and a
self-signed certificate of its own once, found again by their ``Rack`` tag.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from shared.errors import BadRequest, NotFound
from shared.logfmt import Logger
from shared.manifest import Manifest
from shared.provider.aws import stacks
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.settings import AwsProviderSettings
from shared.provider.aws.templates import PortMap, ProcessPorts, app_template, logical_id

log = Logger("appstacks")
HTTPS = 443
"""The balancer port of a public port that names none: HTTPS with the rack's certificate, as Convox's router."""
BOOTSTRAP_CIDR = "10.128.0.0/16"


def stack_name(rack: str, app: str) -> str:
    return f"{rack}-app-{app}"


def processes_of(manifest: Manifest) -> list[ProcessPorts]:
    """The balancers a manifest asks for: per process type, its public ports (the first one that names no
    balancer port gets 443, later ones their container port) and its internal ones."""
    found = []
    for name, service in sorted(manifest.services.items()):
        public: list[PortMap] = []
        internal: list[PortMap] = []
        for mapping in service.ports:
            if not mapping.public:
                internal.append(PortMap(port=mapping.container, container=mapping.container))
                continue
            taken = {p.port for p in public}
            port = mapping.balancer or (HTTPS if HTTPS not in taken else mapping.container)
            if port in taken:
                raise BadRequest(f"process type {name} has two public ports on balancer port {port}")
            public.append(PortMap(port=port, container=mapping.container))
        if public or internal:
            found.append(ProcessPorts(name=name, public=public, internal=internal))
    return found


def endpoint(dns: str, port: int) -> str:
    return f"https://{dns}" if port == HTTPS else f"http://{dns}:{port}"


@dataclass(frozen=True)
class Balancers:
    """What an app stack's outputs say of one process type's balancers."""

    public: list[tuple[PortMap, str]]
    """Each public port with its target group's ARN."""
    internal: list[tuple[PortMap, str]]
    dns: str
    internal_dns: str

    @property
    def endpoints(self) -> list[str]:
        return [endpoint(self.dns, p.port) for p, _ in self.public]

    @property
    def ports(self) -> list[str]:
        """As `convox ps` and the formation show them: ``443:3000`` for a public port, ``3000`` for an internal."""
        return [f"{p.port}:{p.container}" for p, _ in self.public] + [str(p.container) for p, _ in self.internal]


def balancers_of(processes: list[ProcessPorts], outputs: dict[str, str]) -> dict[str, Balancers]:
    found = {}
    for process in processes:
        logical = logical_id(process.name)
        found[process.name] = Balancers(
            public=[(p, outputs.get(f"{logical}Port{p.port}Targets", "")) for p in process.public],
            internal=[(p, outputs.get(f"{logical}Internal{p.port}Targets", "")) for p in process.internal],
            dns=outputs.get(f"{logical}Balancer", ""),
            internal_dns=outputs.get(f"{logical}Internal", ""),
        )
    return found


@dataclass(frozen=True)
class Network:
    vpc: str
    cidr: str
    subnets: list[str]
    certificate: str


class AppStacks:
    def __init__(self, clients: Clients, rack: str, settings: AwsProviderSettings) -> None:
        self.clients = clients
        self.rack = rack
        self.settings = settings
        self._network: Network | None = None
        self._lock = asyncio.Lock()

    async def cfn(self) -> Any:
        return await self.clients.get("cloudformation")

    def tags(self, app: str) -> list[dict[str, str]]:
        return [
            {"Key": "System", "Value": "convox"},
            {"Key": "Rack", "Value": self.rack},
            {"Key": "Type", "Value": "app"},
            {"Key": "App", "Value": app},
        ]

    async def network(self) -> Network:
        """The rack's network: the settings, else the rack stack's outputs (``Vpc``, ``VpcCidr``, ``Subnets``;
        the certificate from its ``CertificateArn``), a VPC read from the subnets, or (bootstrapped) one made."""
        if self._network is not None:
            return self._network
        async with self._lock:
            if self._network is None:
                self._network = await self._find_network()
        return self._network

    async def _find_network(self) -> Network:
        s = self.settings
        vpc, cidr, subnets, certificate = s.vpc, s.vpc_cidr, list(s.subnets), s.certificate
        if not (vpc and cidr and subnets and certificate):
            cfn = await self.cfn()
            with translated(f"cannot read the rack stack {s.stack or self.rack}"):
                rack = await stacks.describe(cfn, s.stack or self.rack)
            out = stacks.outputs(rack) if rack else {}
            vpc, cidr = vpc or out.get("Vpc", ""), cidr or out.get("VpcCidr", "")
            subnets = subnets or [subnet for subnet in out.get("Subnets", "").split(",") if subnet]
            certificate = certificate or (stacks.parameters(rack).get("CertificateArn", "") if rack else "")
        if subnets and not (vpc and cidr):
            ec2 = await self.clients.get("ec2")
            with translated("cannot read the rack's subnets"):
                vpc = vpc or str((await ec2.describe_subnets(SubnetIds=subnets[:1]))["Subnets"][0]["VpcId"])
                cidr = cidr or str((await ec2.describe_vpcs(VpcIds=[vpc]))["Vpcs"][0]["CidrBlock"])
        if vpc and cidr and subnets:
            if not certificate and s.bootstrap:
                certificate = await self._certificate()
            return Network(vpc, cidr, subnets, certificate)
        if s.bootstrap:
            return await self._bootstrap()
        raise BadRequest(
            "the rack's network is not known: no rack stack with Vpc, VpcCidr and Subnets outputs, and "
            "RACK_AWS_VPC, RACK_AWS_VPC_CIDR and RACK_AWS_SUBNETS are not set (start the rack against its "
            "stack: convox rack start --provider aws --stack NAME)"
        )

    async def _bootstrap(self) -> Network:
        """A rack without a rack stack: a VPC with two subnets and a self-signed certificate, made once."""
        ec2 = await self.clients.get("ec2")
        tag = [{"Name": "tag:Rack", "Values": [self.rack]}, {"Name": "tag:Type", "Values": ["bootstrap"]}]
        with translated("cannot make the bootstrapped rack's network"):
            vpcs = (await ec2.describe_vpcs(Filters=tag))["Vpcs"]
            if vpcs:
                vpc = vpcs[0]["VpcId"]
            else:
                marks = [{"Key": "Rack", "Value": self.rack}, {"Key": "Type", "Value": "bootstrap"}]
                spec = [{"ResourceType": "vpc", "Tags": marks}]
                vpc = (await ec2.create_vpc(CidrBlock=BOOTSTRAP_CIDR, TagSpecifications=spec))["Vpc"]["VpcId"]
            listed = await ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
            subnets = [subnet["SubnetId"] for subnet in listed["Subnets"]]
            zones = [z["ZoneName"] for z in (await ec2.describe_availability_zones())["AvailabilityZones"]]
            for index in range(len(subnets), 2):
                made = await ec2.create_subnet(
                    VpcId=vpc, CidrBlock=f"10.128.{index}.0/24", AvailabilityZone=zones[index % len(zones)]
                )
                subnets.append(made["Subnet"]["SubnetId"])
        return Network(vpc, BOOTSTRAP_CIDR, sorted(subnets), await self._certificate())

    async def _certificate(self) -> str:
        """A bootstrapped rack's self-signed certificate in ACM, imported once (found again by its tags)."""
        acm = await self.clients.get("acm")
        with translated("cannot make the bootstrapped rack's certificate"):
            for summary in (await acm.list_certificates())["CertificateSummaryList"]:
                listed = await acm.list_tags_for_certificate(CertificateArn=summary["CertificateArn"])
                tags = {t["Key"]: t.get("Value", "") for t in listed.get("Tags", [])}
                if tags.get("Rack") == self.rack and tags.get("Type") == "bootstrap":
                    return str(summary["CertificateArn"])
            from shared.provider.aws.certificate import self_signed

            cert = await asyncio.to_thread(self_signed, f"{self.rack}.convox")
            made = await acm.import_certificate(
                Certificate=cert.certificate.encode(),
                PrivateKey=cert.key.encode(),
                Tags=[{"Key": "Rack", "Value": self.rack}, {"Key": "Type", "Value": "bootstrap"}],
            )
            return str(made["CertificateArn"])

    async def parameters(self, processes: list[ProcessPorts]) -> list[dict[str, str]]:
        network = await self.network()
        values = {"Vpc": network.vpc, "VpcCidr": network.cidr, "Subnets": ",".join(network.subnets)}
        if any(p.public for p in processes):
            if not network.certificate:
                raise BadRequest("the rack has no TLS certificate for public ports (RACK_AWS_CERTIFICATE)")
            values["CertificateArn"] = network.certificate
        return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]

    async def create(self, app: str) -> None:
        """Start creating the app's stack (no balancer yet: the first promote adds those); returns at once."""
        cfn = await self.cfn()
        with translated(f"cannot create the stack of app {app}"):
            await cfn.create_stack(
                StackName=stack_name(self.rack, app),
                TemplateBody=app_template(self.rack, app, []),
                Parameters=await self.parameters([]),
                Tags=self.tags(app),
                OnFailure="DELETE",
            )
        log.log("app.stack.create", app=app)

    async def statuses(self) -> dict[str, str]:
        """Every app stack of the rack's status (CloudFormation's), by app: one paged DescribeStacks."""
        cfn = await self.cfn()
        found: dict[str, str] = {}
        with translated("cannot list the apps' stacks"):
            paginator = cfn.get_paginator("describe_stacks")
            async for page in paginator.paginate():
                for stack in page.get("Stacks", []):
                    tags = {t["Key"]: t["Value"] for t in stack.get("Tags", [])}
                    app = tags.get("App", "")
                    mine = tags.get("Rack") == self.rack and tags.get("Type") == "app"
                    if mine and app and stack["StackName"] == stack_name(self.rack, app):
                        found[app] = str(stack["StackStatus"])
        return found

    async def describe(self, app: str) -> dict[str, Any] | None:
        cfn = await self.cfn()
        with translated(f"cannot read the stack of app {app}"):
            return await stacks.describe(cfn, stack_name(self.rack, app))

    async def status(self, app: str) -> str | None:
        stack = await self.describe(app)
        return None if stack is None else str(stack["StackStatus"])

    async def balancers(self, app: str, manifest: Manifest) -> dict[str, Balancers]:
        """The balancers the stack has now for the manifest's ports (empty ARNs before a promote made them)."""
        stack = await self.describe(app)
        return balancers_of(processes_of(manifest), stacks.outputs(stack) if stack else {})

    async def update(self, app: str, manifest: Manifest) -> dict[str, Balancers]:
        """Make the stack hold the manifest's balancers (an update only when they change, waiting for it)."""
        processes = processes_of(manifest)
        name = stack_name(self.rack, app)
        cfn = await self.cfn()
        template = app_template(self.rack, app, processes)
        with translated(f"cannot update the stack of app {app}"):
            try:
                stack = await stacks.wait(cfn, name, poll=stacks.POLL) if await self._busy(app) else None
                stack = stack or await self.describe(app)
                if stack is None:
                    raise NotFound(f"app {app} has no stack {name}")
                current = (await cfn.get_template(StackName=name))["TemplateBody"]
                if current != template:
                    try:
                        await cfn.update_stack(
                            StackName=name, TemplateBody=template, Parameters=await self.parameters(processes)
                        )
                    except Exception as exc:
                        if "No updates are to be performed" not in str(exc):
                            raise
                    else:
                        stack = await stacks.wait(cfn, name, poll=stacks.POLL)
                        log.log("app.stack.update", app=app, balancers=len(processes))
            except stacks.StackError as exc:
                raise BadRequest(f"the stack of app {app} could not take the release's ports: {exc}") from None
        if stack is None:
            raise NotFound(f"app {app} has no stack {name}")
        return balancers_of(processes, stacks.outputs(stack))

    async def _busy(self, app: str) -> bool:
        status = await self.status(app) or ""
        return status.endswith("_IN_PROGRESS")

    async def delete(self, app: str) -> None:
        """Delete the stack and wait; then the target groups it named (moto's stack deletion leaves them)."""
        cfn = await self.cfn()
        stack = await self.describe(app)
        if stack is None:
            return
        groups = [v for k, v in stacks.outputs(stack).items() if k.endswith("Targets") and v]
        with translated(f"cannot delete the stack of app {app}"):
            if str(stack["StackStatus"]).endswith("_IN_PROGRESS"):
                await stacks.wait(cfn, stack["StackId"], poll=stacks.POLL)
            await stacks.delete(cfn, stack["StackId"])
        elb = await self.clients.get("elbv2")
        for arn in groups:
            try:
                await elb.delete_target_group(TargetGroupArn=arn)
            except Exception as exc:
                if error_code(exc) not in ("TargetGroupNotFound", "TargetGroupNotFoundException"):
                    with translated(f"cannot delete the target group {arn} of app {app}"):
                        raise
        log.log("app.stack.delete", app=app)
