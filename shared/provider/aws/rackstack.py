"""A rack started against its installed stack: the provider's names from the rack stack's outputs.

``convox rack start --provider aws --stack NAME`` (or ``RACK_AWS_STACK``) calls :func:`from_stack` before
the rack's services start: it reads the stack (DescribeStacks), refuses one that is missing or is not a
rack (the tags ``System=convox`` and ``Type=rack`` that install writes and uninstall checks), and turns its
outputs into the provider's settings (``RACK_AWS_*``, which the services inherit) and its password
parameter into the rack password, so that the rack uses exactly what install made.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr

from shared.errors import BadRequest, NotFound
from shared.models import Model
from shared.provider.aws import stacks
from shared.provider.aws.credentials import AwsCredentials, session

REQUIRED = (
    "Cluster",
    "Settings",
    "TablePrefix",
    "AppsTable",
    "BuildsTable",
    "ReleasesTable",
    "ResourcesTable",
    "LogGroup",
    "EncryptionKey",
    "LaunchType",
    "Subnets",
    "InstancesSecurity",
    "ExecutionRole",
)
"""The outputs a rack stack has (cloudformation/rack.yml); a stack without one was made by another version."""


class StackRack(Model):
    """What a rack started against its stack runs with."""

    name: str
    region: str
    environment: dict[str, str]
    """The provider's settings as the ``RACK_AWS_*`` variables its services read (no secret among them)."""
    password: SecretStr
    status: str


def settings_environment(
    name: str, region: str, out: dict[str, str], params: dict[str, str] | None = None, certificate: str = ""
) -> dict[str, str]:
    """The ``RACK_AWS_*`` settings named by the rack stack's outputs (and its ``BuildImage`` parameter);
    ``certificate`` is the PEM of the balancer's certificate (``CertificateArn``), which builders pin."""
    missing = [key for key in REQUIRED if not out.get(key)]
    if missing:
        raise BadRequest(f"stack {name} lacks the rack outputs {', '.join(missing)}: was it installed by this version?")
    prefix = out["TablePrefix"]
    tables = {"AppsTable": "apps", "BuildsTable": "builds", "ReleasesTable": "releases", "ResourcesTable": "resources"}
    wrong = [key for key, suffix in tables.items() if out[key] != f"{prefix}-{suffix}"]
    if wrong:
        raise BadRequest(f"stack {name}: the tables {', '.join(wrong)} are not named after TablePrefix {prefix}")
    return {
        "RACK_AWS_STACK": name,
        "RACK_AWS_REGION": region,
        "RACK_AWS_CLUSTER": out["Cluster"],
        "RACK_AWS_BUCKET": out["Settings"],
        "RACK_AWS_TABLE_PREFIX": prefix,
        "RACK_AWS_KMS_KEY": out["EncryptionKey"],
        "RACK_AWS_LOG_GROUP_PREFIX": out["LogGroup"],
        "RACK_AWS_LAUNCH_TYPE": out["LaunchType"],
        "RACK_AWS_SUBNETS": json.dumps([s for s in out["Subnets"].split(",") if s]),
        "RACK_AWS_SECURITY_GROUPS": json.dumps([out["InstancesSecurity"]]),
        "RACK_AWS_EXECUTION_ROLE": out["ExecutionRole"],
        "RACK_AWS_VPC": out.get("Vpc", ""),
        "RACK_AWS_VPC_CIDR": out.get("VpcCidr", ""),
        "RACK_AWS_CERTIFICATE": (params or {}).get("CertificateArn", ""),
        "RACK_AWS_BOOTSTRAP": "false",  # the stack made the tables, bucket and cluster
        "RACK_AWS_REPORT_URL": out.get("Url", ""),  # where builder tasks report: the API's balancer
        "RACK_AWS_REPORT_CA": certificate,  # what the balancer presents there (a public certificate, no secret)
        "RACK_AWS_BUILD_IMAGE": (params or {}).get("BuildImage", ""),
    }


def check_rack(name: str, stack: dict[str, Any] | None) -> dict[str, Any]:
    if stack is None:
        raise NotFound(f"no rack stack named {name} in this account and region (install one: convox rack install aws)")
    tags = {t["Key"]: t["Value"] for t in stack.get("Tags", [])}
    if tags.get("System") != "convox" or tags.get("Type") != "rack":
        raise BadRequest(f"stack {name} is not a rack (no System=convox, Type=rack tags)")
    status = str(stack.get("StackStatus", ""))
    if status.endswith("_IN_PROGRESS") and status.startswith(("CREATE", "DELETE")):
        raise BadRequest(f"stack {name} is {status}: wait until it is complete")
    if status in {"CREATE_FAILED", "ROLLBACK_COMPLETE", "DELETE_FAILED"}:
        raise BadRequest(f"stack {name} is {status}: it cannot run a rack")
    return stack


async def balancer_certificate(sess: Any, arn: str) -> str:
    """The PEM of the balancer's certificate (ACM GetCertificate); empty when there is none to read (builders
    then pin the rack's own certificate, see ``AwsProviderSettings.report_ca``)."""
    if not arn:
        return ""
    try:
        async with sess.client("acm") as acm:
            return str((await acm.get_certificate(CertificateArn=arn)).get("Certificate", ""))
    except Exception:  # a certificate of the user's that this role may not read: builders pin the rack's own
        return ""


async def from_stack(name: str, region: str | None = None, credentials: AwsCredentials | None = None) -> StackRack:
    """The settings and password of the rack installed as stack ``name``, reached with ``credentials`` (the
    key of a credentials .csv), else the standard AWS settings."""
    sess = session(credentials, region or None)
    region = str(sess.region_name or "us-east-1")
    async with sess.client("cloudformation") as cfn, sess.client("ssm") as ssm:
        stack = check_rack(name, await stacks.describe(cfn, name))
        parameter = stacks.parameters(stack).get("PasswordParameter", "")
        if not parameter:
            raise BadRequest(f"stack {name} names no PasswordParameter: was it installed by convox rack install?")
        try:
            found = await ssm.get_parameter(Name=parameter, WithDecryption=True)
        except Exception as exc:
            if "ParameterNotFound" in str(exc):
                raise NotFound(f"the password parameter {parameter} of rack {name} is gone") from None
            raise
        certificate = await balancer_certificate(sess, stacks.parameters(stack).get("CertificateArn", ""))
    return StackRack(
        name=name,
        region=region,
        environment=settings_environment(name, region, stacks.outputs(stack), stacks.parameters(stack), certificate),
        password=SecretStr(str(found["Parameter"]["Value"])),
        status=str(stack["StackStatus"]),
    )
