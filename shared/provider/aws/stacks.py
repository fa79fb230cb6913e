"""CloudFormation stacks: create, update parameters, delete, and wait, showing progress from stack events.

Every update passes every parameter explicitly (never ``UsePreviousValue``: moto 5 answers 500 for a
parameter that was defaulted at create) and waits on the stack's status, printing each new stack event once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from shared.errors import BadRequest, NotFound
from shared.models import Model

POLL = 2.0
"""Seconds between DescribeStackEvents calls while a stack changes (about 1 call per poll per stack)."""
TIMEOUT = 3600.0


class StackEvent(Model):
    timestamp: datetime.datetime
    logical_id: str
    resource_type: str
    status: str
    reason: str = ""

    def line(self) -> str:
        text = f"{self.timestamp:%H:%M:%S}  {self.status:<30} {self.logical_id} ({self.resource_type})"
        return f"{text}: {self.reason}" if self.reason else text


OnEvent = Callable[[StackEvent], None]


class StackError(RuntimeError):
    """The stack ended in a failed state; the message carries the first failure's reason."""


class TemplateLoader(yaml.SafeLoader):
    """Reads a template's plain structure, leaving intrinsic functions (``!Ref`` ...) as None."""


TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def template_parameters(template: str) -> dict[str, dict[str, Any]]:
    """The ``Parameters`` section of a template: name -> its declaration (Type, Default, ...)."""
    data = yaml.load(template, Loader=TemplateLoader)  # a SafeLoader subclass
    params = data.get("Parameters") if isinstance(data, dict) else None
    return {str(k): dict(v or {}) for k, v in (params or {}).items()}


def _is_missing(exc: Exception) -> bool:
    return "does not exist" in str(exc)


async def describe(cfn: Any, name: str) -> dict[str, Any] | None:
    """The stack, or None when there is none (deleted stacks included)."""
    try:
        stacks = (await cfn.describe_stacks(StackName=name))["Stacks"]
    except Exception as exc:  # botocore ClientError ValidationError "Stack with id X does not exist"
        if _is_missing(exc):
            return None
        raise
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs", [])}


def parameters(stack: Mapping[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: str(p["ParameterValue"]) for p in stack.get("Parameters", [])}


async def _events(cfn: Any, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StackName": name}
    while True:
        page = await cfn.describe_stack_events(**kwargs)
        found += page.get("StackEvents", [])
        token = page.get("NextToken")
        if not token or len(found) > 1000:
            return found
        kwargs["NextToken"] = token


async def wait(
    cfn: Any,
    name: str,
    on_event: OnEvent | None = None,
    *,
    poll: float = POLL,
    limit: float = TIMEOUT,
    seen: set[str] | None = None,
) -> dict[str, Any] | None:
    """Wait until the stack is no longer ``*_IN_PROGRESS``; returns it (None once deleted).

    Raises StackError for a failed or rolled-back end state. Events are shown oldest first, each once;
    ``seen`` holds the ids of events from before this change (not shown).
    """
    seen = set(seen or ())
    stack_id = name
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        stack = await describe(cfn, stack_id)
        if stack is not None:
            stack_id = stack["StackId"]  # follow the id: a deleted stack is found by id only
        try:
            events = await _events(cfn, stack_id)
        except Exception as exc:
            if not _is_missing(exc):
                raise
            events = []
        fresh = [e for e in reversed(events) if e["EventId"] not in seen]
        for event in fresh:
            seen.add(event["EventId"])
            if on_event is not None:
                on_event(
                    StackEvent(
                        timestamp=event["Timestamp"],
                        logical_id=event.get("LogicalResourceId") or "?",
                        resource_type=event.get("ResourceType") or "?",
                        status=event.get("ResourceStatus") or "?",
                        reason=event.get("ResourceStatusReason") or "",
                    )
                )
        if stack is None:
            return None
        status: str = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            if "ROLLBACK" in status or status.endswith("_FAILED"):
                failed = [e for e in reversed(events) if str(e.get("ResourceStatus")).endswith("FAILED")]
                reasons = [e.get("ResourceStatusReason") for e in failed]
                reason = next((r for r in reasons if r), stack.get("StackStatusReason") or "no reason given")
                raise StackError(f"stack {name}: {status}: {reason}")
            return stack
        if asyncio.get_running_loop().time() > deadline:
            raise StackError(f"stack {name}: still {status} after {limit:.0f} s")
        await asyncio.sleep(poll)


async def create(
    cfn: Any,
    name: str,
    template: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    on_event: OnEvent | None = None,
    *,
    poll: float = POLL,
) -> dict[str, Any]:
    await cfn.create_stack(
        StackName=name,
        TemplateBody=template,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        Capabilities=["CAPABILITY_IAM"],
        OnFailure="DELETE",
    )
    stack = await wait(cfn, name, on_event, poll=poll)
    if stack is None:
        raise StackError(f"stack {name}: deleted while it was being created")
    return stack


async def update_parameters(
    cfn: Any,
    name: str,
    changes: Mapping[str, str],
    on_event: OnEvent | None = None,
    *,
    poll: float = POLL,
    wait_done: bool = True,
) -> dict[str, Any]:
    """Change some of the stack's parameters (the same template); every other one keeps its value. Without
    ``wait_done`` it returns once the update has begun, the stack as described then with the new values."""
    stack = await describe(cfn, name)
    if stack is None:
        raise NotFound(f"no stack {name}")
    current = parameters(stack)
    unknown = sorted(set(changes) - set(current))
    if unknown:
        raise BadRequest(f"unknown parameter {', '.join(unknown)} (known: {', '.join(sorted(current))})")
    merged = {**current, **changes}
    if merged == current:
        return stack
    before = await _event_ids(cfn, stack["StackId"])
    try:
        # The stack's own template sent back (not UsePreviousTemplate: moto 5 then drops the stack's Outputs).
        body = (await cfn.get_template(StackName=stack["StackId"]))["TemplateBody"]
        await cfn.update_stack(
            StackName=name,
            TemplateBody=body if isinstance(body, str) else json.dumps(body),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in merged.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
    except Exception as exc:
        if "No updates are to be performed" in str(exc):
            return stack
        raise BadRequest(f"stack {name}: {_message(exc)}") from None
    if not wait_done:
        listed = [{"ParameterKey": k, "ParameterValue": v} for k, v in merged.items()]
        return {**stack, "Parameters": listed, "StackStatus": "UPDATE_IN_PROGRESS"}
    updated = await wait(cfn, name, on_event, poll=poll, seen=before)
    if updated is None:
        raise StackError(f"stack {name}: deleted while it was being updated")
    return updated


async def delete(cfn: Any, name: str, on_event: OnEvent | None = None, *, poll: float = POLL) -> None:
    stack = await describe(cfn, name)
    if stack is None:
        return
    before = await _event_ids(cfn, stack["StackId"])
    await cfn.delete_stack(StackName=stack["StackId"])
    await wait(cfn, stack["StackId"], on_event, poll=poll, seen=before)


async def _event_ids(cfn: Any, stack_id: str) -> set[str]:
    return {e["EventId"] for e in await _events(cfn, stack_id)}


def _message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message") or exc)
    return str(exc)


class StackParams:
    """The rack's parameters as the provider contract's ParamsAPI: the rack stack's parameters.

    ``set`` with an empty value restores the template's default. Installer-owned parameters
    (``CertificateArn``, ``PasswordParameter``) are shown but cannot be changed here.
    """

    def __init__(self, session: Any, stack: str, on_event: OnEvent | None = None, poll: float = POLL) -> None:
        self._session = session
        self._stack = stack
        self._on_event = on_event
        self._poll = poll

    async def get(self) -> dict[str, str]:
        async with self._session.client("cloudformation") as cfn:
            stack = await describe(cfn, self._stack)
            if stack is None:
                raise NotFound(f"no rack stack {self._stack}")
            return parameters(stack)

    async def set(self, values: dict[str, str]) -> dict[str, str]:
        async with self._session.client("cloudformation") as cfn:
            changes = await with_defaults(cfn, self._stack, values)
            stack = await update_parameters(cfn, self._stack, changes, self._on_event, poll=self._poll)
            return parameters(stack)


PROTECTED_PARAMETERS = frozenset({"PasswordParameter"})
"""Rack stack parameters set by the installer: shown, never changed by ``rack params set``."""


async def with_defaults(cfn: Any, name: str, values: Mapping[str, str]) -> dict[str, str]:
    """``values`` with each empty one replaced by the stack template's default (refused: an installer-owned
    parameter)."""
    protected = sorted(set(values) & PROTECTED_PARAMETERS)
    if protected:
        raise BadRequest(f"{', '.join(protected)} is set by the installer and cannot be changed")
    changes = dict(values)
    if any(v == "" for v in values.values()):
        body = (await cfn.get_template(StackName=name))["TemplateBody"]
        declared = template_parameters(body if isinstance(body, str) else yaml.safe_dump(body))
        for key, value in values.items():
            if value == "" and key in declared and "Default" in declared[key]:
                changes[key] = str(declared[key]["Default"])
    return changes


def human_status(stack_status: str | None) -> str:
    """An app's status from its stack's (Convox's ``humanStatus``): creating, running, updating, rollback,
    failed, deleting; a missing stack is ``deleted``."""
    if not stack_status or stack_status == "DELETE_COMPLETE":
        return "deleted"
    if stack_status == "CREATE_IN_PROGRESS":
        return "creating"
    if stack_status == "DELETE_IN_PROGRESS":
        return "deleting"
    if stack_status == "ROLLBACK_COMPLETE" or (stack_status.endswith("_FAILED") and stack_status != "DELETE_FAILED"):
        return "failed"
    if stack_status.endswith("ROLLBACK_IN_PROGRESS"):
        return "rollback"
    if stack_status.endswith("_IN_PROGRESS"):
        return "updating"
    return "running"  # *_COMPLETE, UPDATE_ROLLBACK_COMPLETE and DELETE_FAILED: the app still runs
