"""The rack's state on AWS: DynamoDB tables (apps, releases, builds, resources) and the settings bucket in S3.

Tables are ``<prefix>-apps`` and ``<prefix>-resources`` (key ``name``), ``<prefix>-releases`` and
``<prefix>-builds`` (key ``id``, index ``app.created`` on ``app`` + ``created``), as Convox keyed them. Writes
that race are conditional (``attribute_not_exists``, a version or pointer guard) or transactions, so that no
update is lost. Objects (build sources, environments, service passwords) live in the settings bucket;
environments and passwords are encrypted with SSE-KMS.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.archive import human_size, read_chunks
from shared.errors import NotFound, PayloadTooLarge
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.settings import AwsProviderSettings

Item = dict[str, Any]
INDEX = "app.created"
PART = 8 * 1024 * 1024


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def to_attr(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute (strings, ints, bools, lists and dicts of those)."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {k: to_attr(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"L": [to_attr(v) for v in value]}
    if value is None:
        return {"NULL": True}
    raise TypeError(f"cannot store {type(value).__name__}")


def from_attr(attr: dict[str, Any]) -> Any:
    ((kind, value),) = attr.items()
    if kind == "S":
        return value
    if kind == "N":
        number = float(value)
        return int(number) if number.is_integer() else number
    if kind == "BOOL":
        return bool(value)
    if kind == "M":
        return {k: from_attr(v) for k, v in value.items()}
    if kind == "L":
        return [from_attr(v) for v in value]
    return None


def to_item(values: Item) -> dict[str, Any]:
    return {k: to_attr(v) for k, v in values.items()}


def from_item(item: dict[str, Any]) -> Item:
    return {k: from_attr(v) for k, v in item.items()}


class State:
    """DynamoDB and S3 access for the provider's modules."""

    def __init__(self, clients: Clients, settings: AwsProviderSettings, rack: str) -> None:
        self.clients = clients
        self.settings = settings
        prefix = settings.table_prefix or rack
        self.apps_table = f"{prefix}-apps"
        self.releases_table = f"{prefix}-releases"
        self.builds_table = f"{prefix}-builds"
        self.resources_table = f"{prefix}-resources"
        self.bucket = settings.bucket or f"{rack}-settings"
        self.log_prefix = settings.log_group_prefix or f"/convox/{rack}"
        """The rack's own log group; each app's is ``<prefix>/<app>``."""

    async def dynamodb(self) -> Any:
        return await self.clients.get("dynamodb")

    async def s3(self) -> Any:
        return await self.clients.get("s3")

    # ---- set-up --------------------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Create the tables and the bucket when missing (what the rack stack makes on a real install)."""
        db = await self.dynamodb()
        with translated("cannot create the rack's tables"):
            existing = set((await db.list_tables())["TableNames"])
            for table in (self.apps_table, self.resources_table):
                if table in existing:
                    continue
                await db.create_table(
                    TableName=table,
                    AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
                    BillingMode="PAY_PER_REQUEST",
                )
            for table in (self.releases_table, self.builds_table):
                if table in existing:
                    continue
                await db.create_table(
                    TableName=table,
                    AttributeDefinitions=[
                        {"AttributeName": "id", "AttributeType": "S"},
                        {"AttributeName": "app", "AttributeType": "S"},
                        {"AttributeName": "created", "AttributeType": "S"},
                    ],
                    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                    GlobalSecondaryIndexes=[
                        {
                            "IndexName": INDEX,
                            "KeySchema": [
                                {"AttributeName": "app", "KeyType": "HASH"},
                                {"AttributeName": "created", "KeyType": "RANGE"},
                            ],
                            "Projection": {"ProjectionType": "ALL"},
                        }
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
        s3 = await self.s3()
        try:
            await s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            with translated("cannot create the rack's bucket"):
                if self.clients.region == "us-east-1":
                    await s3.create_bucket(Bucket=self.bucket)
                else:
                    await s3.create_bucket(
                        Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": self.clients.region}
                    )

    # ---- items ---------------------------------------------------------------------------------------

    async def get_item(self, table: str, key: Item, missing: str) -> Item:
        db = await self.dynamodb()
        with translated(missing):
            response = await db.get_item(TableName=table, Key=to_item(key), ConsistentRead=True)
        if "Item" not in response:
            raise NotFound(missing)
        return from_item(response["Item"])

    async def query_app(self, table: str, app: str, limit: int) -> list[Item]:
        """An app's items of ``table``, newest first."""
        db = await self.dynamodb()
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": table,
            "IndexName": INDEX,
            "KeyConditionExpression": "app = :app",
            "ExpressionAttributeValues": {":app": {"S": app}},
            "ScanIndexForward": False,
        }
        with translated(f"cannot list {table}"):
            while len(items) < limit:
                response = await db.query(**kwargs, Limit=limit - len(items))
                items.extend(from_item(i) for i in response.get("Items", []))
                if "LastEvaluatedKey" not in response:
                    break
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return items[:limit]

    async def scan(self, table: str) -> AsyncIterator[Item]:
        db = await self.dynamodb()
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            with translated(f"cannot list {table}"):
                response = await db.scan(**kwargs)
            for item in response.get("Items", []):
                yield from_item(item)
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def delete_app_items(self, table: str, app: str) -> None:
        db = await self.dynamodb()
        for item in await self.query_app(table, app, 100_000):
            with translated(f"cannot delete from {table}"):
                await db.delete_item(TableName=table, Key={"id": {"S": item["id"]}})

    # ---- objects -------------------------------------------------------------------------------------

    async def put_secret_json(self, key: str, value: Any) -> None:
        """An object encrypted with SSE-KMS (the rack's key, or the AWS-managed one)."""
        s3 = await self.s3()
        extra: dict[str, Any] = {"ServerSideEncryption": "aws:kms"}
        if self.settings.kms_key:
            extra["SSEKMSKeyId"] = self.settings.kms_key
        with translated(f"cannot store {key}"):
            await s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(value).encode(), **extra)

    async def get_json(self, key: str) -> Any:
        s3 = await self.s3()
        with translated(f"no such object: {key}"):
            response = await s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data = await body.read()
        return json.loads(data)

    async def upload_file(self, key: str, path: Path) -> int:
        """Upload a file (read in a thread, part by part); multipart above the threshold. Returns its size."""
        return await self.upload(key, read_chunks(path), limit=None)

    async def upload(self, key: str, chunks: AsyncIterable[bytes], limit: int | None, what: str = "") -> int:
        """Store what ``chunks`` yields at ``key``: one PUT up to ``multipart_threshold`` bytes, a multipart
        upload of threshold-sized parts above (never more than a part and a chunk in memory). More than
        ``limit`` bytes is PayloadTooLarge (naming ``what``); then, or when ``chunks`` raises, the multipart
        upload is aborted and nothing is stored. Returns the size."""
        s3 = await self.s3()
        threshold = self.settings.multipart_threshold
        buffer = bytearray()
        total = 0
        upload_id = ""
        parts: list[dict[str, Any]] = []

        async def part(data: bytes) -> None:
            nonlocal upload_id
            with translated(f"cannot store {key}"):
                if not upload_id:
                    upload_id = (await s3.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]
                number = len(parts) + 1
                done = await s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
            parts.append({"PartNumber": number, "ETag": done["ETag"]})

        try:
            async for chunk in chunks:
                total += len(chunk)
                if limit is not None and total > limit:
                    raise PayloadTooLarge(f"{what or key} is larger than {human_size(limit)}")
                buffer += chunk
                while len(buffer) > threshold:
                    await part(bytes(buffer[:threshold]))
                    del buffer[:threshold]
            if not upload_id:
                with translated(f"cannot store {key}"):
                    await s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer))
                return total
            await part(bytes(buffer))
            with translated(f"cannot store {key}"):
                await s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id:  # the original error is the one to tell, whatever the abort says
                with contextlib.suppress(Exception):
                    await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return total

    async def delete_prefix(self, prefix: str) -> None:
        s3 = await self.s3()
        with translated(f"cannot delete {prefix}"):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    async def delete_object(self, key: str) -> None:
        s3 = await self.s3()
        with translated(f"cannot delete {key}"):
            await s3.delete_object(Bucket=self.bucket, Key=key)
