"""The AWS provider's settings (env prefix ``RACK_AWS_``); the endpoint and credentials are AWS's own."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AwsProviderSettings(BaseSettings):
    """Names of what the rack stack made, and the provider's tuning. Empty names derive from the rack's name.

    The endpoint, region and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL``,
    ``AWS_DEFAULT_REGION``, the credential chain), read by botocore itself.
    """

    model_config = SettingsConfigDict(env_prefix="RACK_AWS_", extra="ignore")

    stack: str = Field(
        "", description="The installed rack stack; `convox rack start --stack` sets every name below from its outputs."
    )
    region: str = Field("", description="The rack's region; AWS_DEFAULT_REGION (or us-east-1) when empty.")
    cluster: str = Field("", description="The ECS cluster; '<rack>' when empty.")
    bucket: str = Field("", description="The settings bucket (sources, environments); '<rack>-settings' when empty.")
    table_prefix: str = Field("", description="DynamoDB tables are '<prefix>-apps', ... ; '<rack>' when empty.")
    kms_key: str = Field("", description="The KMS key encrypting environments (SSE-KMS); the AWS-managed key if empty.")
    log_group_prefix: str = Field("", description="Apps' log groups are '<prefix>/<app>'; '/convox/<rack>' when empty.")
    launch_type: str = Field("EC2", description="EC2 (container instances) or FARGATE.")
    subnets: list[str] = Field(
        default_factory=list,
        description="Subnets of awsvpc tasks (FARGATE) and of backing services; the rack stack's when empty.",
    )
    security_groups: list[str] = Field(
        default_factory=list,
        description="Security groups of awsvpc tasks; backing services accept connections from these and the "
        "rack stack's InstancesSecurity only.",
    )
    execution_role: str = Field("", description="The task execution role (pulls from ECR, writes logs).")
    vpc: str = Field("", description="The rack's VPC, where app stacks put their security groups and balancers.")
    vpc_cidr: str = Field("", description="The rack's VPC's CIDR: app processes accept connections from it only.")
    certificate: str = Field("", description="The ACM certificate of app balancers' HTTPS listeners (the rack's).")
    bootstrap: bool = Field(False, description="Create missing tables, bucket, cluster (a rack without a stack).")
    log_poll_interval: float = Field(1.0, gt=0, description="Seconds between FilterLogEvents polls when following.")
    log_lookback: float = Field(10.0, ge=0, description="Seconds each poll looks back for lines ingested late.")
    lock_timeout: float = Field(60.0, gt=0, description="Seconds a promote waits for another promote of its app.")
    reaper_interval: float = Field(5.0, gt=0, description="Seconds between checks of one-off time limits.")
    multipart_threshold: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Bytes; above, multipart.")
    build_image: str = Field(
        "", description="The builder image, run as an ECS task per build (empty: builds fail); the stack's BuildImage."
    )
    report_url: str = Field(
        "", description="The rack's URL as the builder task reaches it to report; the stack's Url by default."
    )
    report_ca: str = Field(
        "",
        description="The PEM certificate the builder task must find at report_url (its pin): the balancer's "
        "(ACM) with the stack's Url; the rack's own TLS certificate (its data dir's tls/cert.pem) when empty.",
    )
    build_registry: str = Field(
        "",
        description="HOST[:PORT] builds push to instead of the account's ECR registry (with the app's repository "
        "name, and ECR's authorisation); empty: ECR.",
    )
    db_instance_class: str = Field("db.t4g.micro", description="The RDS instance class of postgres/mysql/mariadb.")
    db_storage: int = Field(20, ge=20, le=65536, description="GiB of storage of each RDS instance.")
    cache_node_type: str = Field("cache.t4g.micro", description="The ElastiCache node type of redis/memcached.")
    resource_poll: float = Field(10.0, gt=0, description="Seconds between status checks of a backing service.")
    resource_timeout: float = Field(3600.0, gt=0, description="Seconds a backing service may take to be ready.")
    resource_lease: float = Field(
        60.0,
        gt=0,
        description="Seconds a process's hold on a backing service's create or delete lasts unless renewed (it "
        "renews it every third of that): the workers' owner takes over the work of a process that died then.",
    )
