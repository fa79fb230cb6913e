"""Random and malformed input to every operation of the rack's OpenAPI document (hypothesis over the schema),
against a real rack through its gateway: no answer is a 5xx, every answer is one the operation documents,
and every error is ``{"error": ...}``. Path parameters come from any unicode text (control and non-ASCII
characters included), their own patterns and a real app; query parameters from their types or any text;
JSON bodies from any JSON or objects with the schema's keys and any values. A fixed number of examples per
operation, derandomized, keeps the run bounded and repeatable."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningRack

EXAMPLES = 20
METHODS = ("get", "put", "post", "delete", "patch")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FUZZED: dict[str, int] = {}
PROBLEMS: dict[tuple[str, int], str] = {}
"""(operation, status) -> one request that got it, for answers that are a 5xx, undocumented or not JSON."""


def document(rack: RunningRack) -> dict[str, Any]:
    response = httpx.get(f"{rack.url}/openapi.json", verify=rack.verify, auth=("x", rack.password))
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


@pytest.fixture
def fuzz_app(rack: RunningRack) -> Iterator[str]:
    """A real app (per test: the fuzzer may delete it) for path parameters to name, so that operations are
    reached past their 404."""
    name = f"fuzz-{secrets.token_hex(3)}"
    auth = ("x", rack.password)
    before = {a["name"] for a in httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=auth).json()}
    assert httpx.post(f"{rack.url}/apps", verify=rack.verify, json={"name": name}, auth=auth).status_code == 201
    try:
        yield name
    finally:
        after = {a["name"] for a in httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=auth).json()}
        for made in sorted(after - before):  # the app, and any the fuzzer made with a valid name
            httpx.delete(f"{rack.url}/apps/{made}", verify=rack.verify, auth=auth, timeout=60)


def segment(pattern: str | None, app: str, name: str) -> st.SearchStrategy[str]:
    """A path parameter: any text (no ``/``, no dot segment: those change the route), its pattern, or the app."""
    anything = st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=40).filter(
        lambda s: s not in (".", "..")
    )
    options = [anything, st.sampled_from(['\x05t"u', "\x04\u00a7\x02", "\u00e9\u00e8", "myapp\n", "a" * 300])]
    if pattern:
        options.append(st.from_regex(pattern.removeprefix("^").removesuffix("$"), fullmatch=True))
    if name in ("app",):
        options.append(st.just(app))
    return st.one_of(options)


def query_value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    kind = schema.get("type") or next((s.get("type") for s in schema.get("anyOf", []) if s.get("type")), "string")
    typed: st.SearchStrategy[str]
    if kind == "boolean":
        typed = st.sampled_from(["true", "false", "1", "0"])
    elif kind == "integer":
        typed = st.integers(-(2**63), 2**63).map(str)
    else:
        typed = st.text(max_size=30)
    return st.one_of(typed, st.text(max_size=30))


def body(operation: dict[str, Any], doc: dict[str, Any]) -> st.SearchStrategy[tuple[str, bytes] | None]:
    content = (operation.get("requestBody") or {}).get("content") or {}
    if "application/json" in content:
        schema = content["application/json"].get("schema") or {}
        ref = schema.get("$ref", "")
        if ref:
            schema = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        keys = list((schema.get("properties") or {}).keys())
        shaped = st.fixed_dictionaries({}, optional={key: JSON for key in keys}) if keys else JSON
        encoded = st.one_of(JSON, shaped).map(lambda v: json.dumps(v).encode())
        raw = st.binary(max_size=64)
        return st.one_of(encoded, raw).map(lambda b: ("application/json", b))
    if content:
        return st.binary(max_size=256).map(lambda b: ("application/octet-stream", b))
    return st.none()


def request_strategy(
    path: str, method: str, operation: dict[str, Any], doc: dict[str, Any], app: str
) -> st.SearchStrategy[dict[str, Any]]:
    params = operation.get("parameters") or []
    path_params = {
        p["name"]: segment((p.get("schema") or {}).get("pattern"), app, p["name"]) for p in params if p["in"] == "path"
    }
    query_params = {p["name"]: query_value(p.get("schema") or {}) for p in params if p["in"] == "query"}
    return st.fixed_dictionaries(
        {
            "path": st.fixed_dictionaries(path_params),
            "query": st.fixed_dictionaries({}, optional=query_params),
            "body": body(operation, doc),
        }
    )


def send(client: httpx.Client, path: str, method: str, request: dict[str, Any]) -> tuple[int, bytes]:
    url = path
    for name, value in request["path"].items():
        url = url.replace("{" + name + "}", quote(value, safe=""))
    query = dict(request["query"])
    if method == "get" and ("follow" in query or url.endswith("/logs")):
        query["follow"] = "false"  # a follow would stream until the test's timeout
    headers = {}
    content = None
    if request["body"] is not None:
        headers["content-type"], content = request["body"]
    with client.stream(method.upper(), url, params=query, content=content, headers=headers) as response:
        data = b""
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > 65536:
                break
        return response.status_code, data


def fuzz_operation(client: httpx.Client, doc: dict[str, Any], app: str, path: str, method: str) -> None:
    operation = doc["paths"][path][method]
    documented = set(operation.get("responses", {}))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request_strategy(path, method, operation, doc, app))
    def check(request: dict[str, Any]) -> None:
        status, data = send(client, path, method, request)
        op = f"{method.upper()} {path}"
        FUZZED[op] = FUZZED.get(op, 0) + 1
        seen = f"{request} -> {data[:200]!r}"
        if status >= 500 or (str(status) not in documented and "default" not in documented):
            PROBLEMS.setdefault((op, status), seen)
        if status >= 400:
            try:
                assert "error" in json.loads(data)
            except (ValueError, AssertionError, TypeError):
                PROBLEMS.setdefault((op, status), "not an error body: " + seen)

    check()


def test_every_operation_survives_random_and_malformed_input(rack: RunningRack, fuzz_app: str) -> None:
    doc = document(rack)
    count = 0
    started = time.monotonic()
    with httpx.Client(base_url=rack.url, verify=rack.verify, auth=("x", rack.password), timeout=30) as client:
        for path, item in doc["paths"].items():
            for method in item:
                if method in METHODS:
                    fuzz_operation(client, doc, fuzz_app, path, method)
                    count += 1
    total = sum(FUZZED.values())
    print(f"fuzzed {count} operations with {total} requests in {time.monotonic() - started:.0f} s")
    assert not PROBLEMS, "\n".join(f"{op} {status}: {seen}" for (op, status), seen in sorted(PROBLEMS.items()))
    assert count >= 30
    assert total >= count * EXAMPLES // 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/apps/%05t%22u/releases/convox/rollback"),
        ("POST", "/apps/%04%C2%A7%02/environment"),
        ("POST", "/apps/%C3%A9%C3%A8/builds"),
        ("DELETE", "/services/%C3%A9%C3%A8/links/%C3%A9%C3%A8"),
        ("GET", "/apps/myapp%0A"),
        ("GET", "/apps/%00/logs"),
    ],
)
def test_control_and_non_ascii_characters_in_path_parameters_are_bad_input(
    rack: RunningRack, method: str, path: str
) -> None:
    auth = ("x", rack.password)
    response = httpx.request(method, f"{rack.url}{path}", verify=rack.verify, auth=auth, json={"A": "b"})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("invalid ")  # the app, the path or a parameter


def test_env_values_with_nul_and_bad_keys_are_refused(rack: RunningRack, fuzz_app: str) -> None:
    auth = ("x", rack.password)
    for env in ({"GOOD": "a\x00b"}, {"BAD\nKEY": "x"}, {"KEY\n": "x"}, {"": "x"}):
        response = httpx.post(f"{rack.url}/apps/{fuzz_app}/environment", verify=rack.verify, json=env, auth=auth)
        assert response.status_code == 400, (env, response.text)
    assert httpx.get(f"{rack.url}/apps/{fuzz_app}/environment", verify=rack.verify, auth=auth).json() == {}


def test_a_json_body_over_the_cap_is_refused_with_413(rack: RunningRack, fuzz_app: str) -> None:
    auth = ("x", rack.password)
    big = {"BIG": "x" * (2 * 1024 * 1024)}
    response = httpx.post(f"{rack.url}/apps/{fuzz_app}/environment", verify=rack.verify, json=big, auth=auth)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it comes
        yield b'{"BIG": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    response = httpx.post(
        f"{rack.url}/apps/{fuzz_app}/environment",
        content=chunks(),
        headers={"content-type": "application/json"},
        auth=auth,
        verify=rack.verify,
    )
    assert response.status_code == 413
    assert httpx.get(f"{rack.url}/apps/{fuzz_app}/environment", verify=rack.verify, auth=auth).json() == {}


def test_every_operation_documents_401_and_503(rack: RunningRack) -> None:
    doc = document(rack)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security") == []:
                continue
            assert {"401", "503"} <= set(responses), (method, path)
            if operation.get("requestBody"):
                assert "413" in responses, (method, path)
            if method in ("post", "put", "patch", "delete"):
                assert "403" in responses, (method, path)
