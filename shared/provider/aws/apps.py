"""Apps on AWS: an item each in ``<prefix>-apps`` (conditional on the name being free) and a stack each
(``appstacks``: log group, image repository, security groups, balancers), whose status is the app's.

The item also carries what promote and scale serialise on: the active and the latest release, the
formation (count and memory per process type) and the promote lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from shared.errors import BadRequest, Conflict, NotFound
from shared.models import RACK_APP, App, invalid_app_name
from shared.names import is_app_name
from shared.provider.aws.appstacks import HTTPS, AppStacks, endpoint
from shared.provider.aws.clients import Clients, error_code, translated
from shared.provider.aws.stacks import human_status, outputs
from shared.provider.aws.state import Item, State, now_iso, to_item

ATTRIBUTE_NAMES = {"#n": "name", "#s": "status", "#r": "release", "#l": "latest", "#f": "formation", "#k": "lock"}
"""Placeholders for the app item's attributes (some are DynamoDB reserved words)."""


def check_name(name: str) -> None:
    if not is_app_name(name):
        raise BadRequest(invalid_app_name(name))


def log_group(prefix: str, app: str) -> str:
    """The app's CloudWatch Logs group under the rack's (``State.log_prefix``); its processes' streams are
    ``TYPE/TYPE/TASKID`` (awslogs)."""
    return f"{prefix}/{app}"


def to_app(item: Item, stack_status: str | None = None) -> App:
    """The app from its item and its stack's status: CloudFormation's word wins while the stack is not at
    rest (``creating``, ``updating``, ``rollback``, ``failed``, ``deleting``); at rest, the item's (a roll-out
    of ECS services sets ``updating`` there)."""
    status, release = item["status"], item.get("release", "")
    if stack_status is not None:
        shown = human_status(stack_status)
        if shown not in ("running", "deleted"):
            status = shown
    if status == "running" and not release:
        status = "created"  # nothing has served yet
    return App(name=item["name"], status=status, release=release)


class AwsApps:
    def __init__(self, state: State, clients: Clients, rack: str, stacks: AppStacks) -> None:
        self.state = state
        self.clients = clients
        self.rack = rack
        self.stacks = stacks
        self.on_delete: list[Callable[[str], Awaitable[None]]] = []
        """Run when an app is being deleted (its services and tasks go), before its records go."""

    async def item(self, name: str) -> Item:
        check_name(name)
        return await self.state.get_item(self.state.apps_table, {"name": name}, f"no such app: {name}")

    async def create(self, name: str) -> App:
        check_name(name)
        if name == RACK_APP:
            raise Conflict(f"app name is reserved for the rack: {name}")
        db = await self.state.dynamodb()
        item = {"name": name, "status": "running", "release": "", "latest": "", "created": now_iso(), "formation": {}}
        with translated(f"app already exists: {name}"):
            await db.put_item(
                TableName=self.state.apps_table,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(#n)",
                ExpressionAttributeNames={"#n": "name"},
            )
        try:
            await self.stacks.create(name)  # its log group, repository, security groups: CloudFormation's work
        except BaseException:
            with translated(f"cannot remove app {name}"):
                await db.delete_item(TableName=self.state.apps_table, Key=to_item({"name": name}))
            raise
        return to_app(item, await self.stacks.status(name))

    async def get(self, name: str) -> App:
        item = await self.item(name)
        stack = await self.stacks.describe(name)
        app = to_app(item, None if stack is None else str(stack["StackStatus"]))
        public = sorted(v for k, v in outputs(stack).items() if k.endswith("Balancer")) if stack else []
        return app.model_copy(update={"balancer": endpoint(public[0], HTTPS)}) if public else app

    async def list(self) -> list[App]:
        statuses = await self.stacks.statuses()
        items = [i async for i in self.state.scan(self.state.apps_table)]
        return sorted((to_app(i, statuses.get(i["name"])) for i in items), key=lambda a: a.name)

    async def update(self, name: str, expression: str, values: dict[str, Any], condition: str = "") -> None:
        """A conditional update of the app's item (its existence is always part of the condition)."""
        db = await self.state.dynamodb()
        check = "attribute_exists(#n)" + (f" AND ({condition})" if condition else "")
        names = {k: v for k, v in ATTRIBUTE_NAMES.items() if k == "#n" or k in expression or k in condition}
        with translated(f"app {name} was changed meanwhile"):
            try:
                await db.update_item(
                    TableName=self.state.apps_table,
                    Key=to_item({"name": name}),
                    UpdateExpression=expression,
                    ConditionExpression=check,
                    ExpressionAttributeNames=names,
                    **({"ExpressionAttributeValues": to_item(values)} if values else {}),
                )
            except Exception as exc:
                if error_code(exc) == "ConditionalCheckFailedException":
                    await self.item(name)  # NotFound when it went
                raise

    async def set_status(self, name: str, status: str, release: str | None = None) -> None:
        if release is None:
            await self.update(name, "SET #s = :s", {":s": status})
        else:
            await self.update(name, "SET #s = :s, #r = :r", {":s": status, ":r": release})

    async def delete(self, name: str) -> None:
        await self.item(name)
        await self.set_status(name, "deleting")
        for hook in self.on_delete:
            await hook(name)
        await self.stacks.delete(name)  # waits: a new app of the same name needs the name free
        logs = await self.clients.get("logs")
        with contextlib.suppress(NotFound), translated(f"cannot delete the log group of {name}"):
            await logs.delete_log_group(logGroupName=log_group(self.state.log_prefix, name))
        for table in (self.state.releases_table, self.state.builds_table):
            await self.state.delete_app_items(table, name)
        await self.state.delete_prefix(f"apps/{name}/")
        db = await self.state.dynamodb()
        with translated(f"cannot delete app {name}"):
            await db.delete_item(TableName=self.state.apps_table, Key=to_item({"name": name}))
