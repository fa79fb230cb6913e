"""shared.protocol, the CLI's view of the API's answers, against the pydantic models the services answer with:
the same fields with the same JSON types, so the two cannot drift; and the CLI reads them without pydantic."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from pydantic import BaseModel

from cli.answers import expect, expect_list, expect_strings
from cli.errors import CliError
from shared import models, protocol

MIRRORED = ["App", "System", "ImageStatus", "Process", "Build", "Release", "Formation", "Resource", "TimerStatus"]
"""Every TypedDict of shared.protocol named after a model (AccessToken is the gateway's own plain answer)."""


def schema_types(schema: dict[str, Any], defs: dict[str, Any]) -> frozenset[str]:
    """The JSON types a field's schema allows: ``string``, ``array<string>``, ``object<string>``, ``null``..."""
    if "$ref" in schema:
        return schema_types(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return frozenset().union(*(schema_types(option, defs) for option in schema["anyOf"]))
    kind = schema.get("type") or ("string" if all(isinstance(v, str) for v in schema.get("enum", [0])) else "?")
    if kind == "array":
        return frozenset(f"array<{t}>" for t in schema_types(schema.get("items", {}), defs))
    if kind == "object":
        return frozenset(f"object<{t}>" for t in schema_types(schema.get("additionalProperties", {}), defs))
    return frozenset([kind])


PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def hint_types(hint: Any) -> frozenset[str]:
    """The JSON types a TypedDict annotation allows, named as :func:`schema_types` names them."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return frozenset().union(*(hint_types(arg) for arg in get_args(hint)))
    if origin is list:
        return frozenset(f"array<{t}>" for t in hint_types(get_args(hint)[0]))
    if origin is dict:
        assert get_args(hint)[0] is str
        return frozenset(f"object<{t}>" for t in hint_types(get_args(hint)[1]))
    return frozenset([PLAIN[hint]])


@pytest.mark.parametrize("name", MIRRORED)
def test_each_answer_type_has_its_models_fields_with_their_json_types(name: str) -> None:
    model: type[BaseModel] = getattr(models, name)
    typed = getattr(protocol, name)
    schema = model.model_json_schema(mode="serialization")
    defs = schema.get("$defs", {})
    hints = get_type_hints(typed)
    assert set(hints) == set(model.model_fields), f"{name}: the fields differ"
    assert typed.__required_keys__ == frozenset(hints)  # the API renders every field, defaults included
    for field, hint in hints.items():
        assert hint_types(hint) == schema_types(schema["properties"][field], defs), f"{name}.{field}"


def test_the_access_token_answer_is_what_the_gateway_documents() -> None:
    from services.gateway.access import ACCESS_PATH

    schema = ACCESS_PATH["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    hints = get_type_hints(protocol.AccessToken)
    assert set(schema["required"]) == set(hints) == protocol.AccessToken.__required_keys__
    for field, hint in hints.items():
        assert hint_types(hint) == schema_types(schema["properties"][field], {}), field


def test_every_answer_type_is_checked_here() -> None:
    typed = {n for n, v in vars(protocol).items() if isinstance(v, type) and typing.is_typeddict(v)}
    assert typed == {*MIRRORED, "AccessToken"}


def test_a_model_as_the_api_renders_it_reads_as_its_answer_type() -> None:
    build = models.Build(id="BAPRZPQKXNE", app="web", status="complete").model_dump(mode="json")
    assert expect(protocol.Build, build, "/apps/web/builds/BAPRZPQKXNE")["status"] == "complete"
    process = models.Process(id="68831d3dce63", app="web", name="web").model_dump(mode="json")
    assert expect_list(protocol.Process, [process], "/apps/web/processes")[0]["ports"] == []


def test_an_answer_the_cli_does_not_know_is_an_error_that_says_so() -> None:
    with pytest.raises(
        CliError, match="without balancer, failed_release, failure, release, status where this CLI expects App"
    ):
        expect(protocol.App, {"name": "web"}, "/apps/web")
    with pytest.raises(CliError, match="with a list where this CLI expects App"):
        expect(protocol.App, [], "/apps/web")
    with pytest.raises(CliError, match="with a dict where this CLI expects a list of Build"):
        expect_list(protocol.Build, {"id": "B"}, "/apps/web/builds")
    with pytest.raises(CliError, match="names and their values"):
        expect_strings({"A": 1}, "/apps/web/environment")
    assert expect_strings({"A": "1"}, "/apps/web/environment") == {"A": "1"}


def test_the_cli_reads_its_answers_without_pydantic() -> None:
    code = (
        "import sys, cli.app, cli.client, cli.answers, cli.stream, cli.completion, cli.cmd_builds, "
        "cli.cmd_processes, cli.cmd_releases, cli.cmd_services, cli.cmd_logs, cli.cmd_timers, cli.init_base; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m == 'shared.models'))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
    code = "import sys, shared.protocol; print(sorted(m for m in sys.modules if m.startswith('shared')))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "['shared', 'shared.protocol']"
