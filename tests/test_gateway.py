"""The gateway: the only public listener, password on every route, one merged OpenAPI document."""

from __future__ import annotations

import re
import time

import httpx
import psutil
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from shared.config import SERVICES
from tests.conftest import RunningRack

METHODS = ("get", "put", "post", "delete", "patch")


def openapi(rack: RunningRack) -> dict[str, object]:
    response = httpx.get(f"{rack.url}/openapi.json", verify=rack.verify, auth=("x", rack.password))
    assert response.status_code == 200
    doc: dict[str, object] = response.json()
    return doc


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_check_needs_no_password(rack: RunningRack) -> None:
    assert httpx.get(f"{rack.url}/check", verify=rack.verify).json() == {"status": "ok"}


def test_every_documented_route_refuses_a_request_without_the_password(rack: RunningRack) -> None:
    doc = openapi(rack)
    paths = doc["paths"]
    assert isinstance(paths, dict)
    checked = 0
    for path, item in paths.items():
        for method in item:
            if method not in METHODS or item[method].get("security") == []:
                continue
            for auth in (None, ("convox", "wrong-password"), ("", "")):
                response = httpx.request(
                    method.upper(), f"{rack.url}{concrete(path)}", verify=rack.verify, auth=auth, json={}
                )
                assert response.status_code == 401, (method, path, auth)
                assert "error" in response.json()
                assert response.headers["www-authenticate"].startswith("Basic")
            checked += 1
    assert checked >= 5
    assert paths["/check"]["get"]["security"] == []
    report = paths["/apps/{app}/builds/{build_id}/report"]["post"]
    assert report["security"] == [{"buildToken": []}]
    passed = httpx.post(  # a build token instead of the password: the builds service answers (local: no reports)
        f"{rack.url}/apps/x1/builds/BX/report", verify=rack.verify, json={}, headers={"X-Build-Token": "t"}
    )
    assert passed.status_code == 404 and "run in the rack" in passed.json()["error"]


def test_any_user_name_works_with_the_password(rack: RunningRack) -> None:
    for user in ("convox", "", "someone"):
        assert httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=(user, rack.password)).status_code == 200


async def test_websocket_routes_need_the_password(rack: RunningRack) -> None:
    url = rack.ws_url + "/apps/x1/logs"
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, ssl=rack.ssl):
            pass
    assert refused.value.response.status_code == 401


def test_openapi_is_one_document_with_unique_stable_operation_ids(rack: RunningRack) -> None:
    doc = openapi(rack)
    ops = [op for item in doc["paths"].values() for op in item.values()]  # type: ignore[attr-defined]
    ids = [op["operationId"] for op in ops]
    assert len(ids) == len(set(ids))
    assert {"check", "app_list", "app_create", "app_get", "app_delete", "system_get"} <= set(ids)
    assert all(op.get("tags") for op in ops)
    schemes = doc["components"]["securitySchemes"]  # type: ignore[index]
    assert schemes["basic"] == {"type": "http", "scheme": "basic"}
    assert {k: schemes["buildToken"][k] for k in ("type", "in", "name")} == {  # builders' reports only
        "type": "apiKey",
        "in": "header",
        "name": "X-Build-Token",
    }
    assert set(schemes) == {"basic", "buildToken"}
    assert doc["security"] == [{"basic": []}]
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # type: ignore[index]
    assert all("422" not in op["responses"] for op in ops)


def test_errors_are_json_with_the_right_status(rack: RunningRack) -> None:
    auth = ("x", rack.password)
    missing = httpx.get(f"{rack.url}/apps/nope", verify=rack.verify, auth=auth)
    assert (missing.status_code, missing.json()) == (404, {"error": "no such app: nope"})
    unrouted = httpx.get(f"{rack.url}/nowhere", verify=rack.verify, auth=auth)
    assert unrouted.status_code == 404 and unrouted.json() == {"error": "no such route: /nowhere"}
    bad = httpx.post(
        f"{rack.url}/apps",
        verify=rack.verify,
        auth=auth,
        content=b"not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and "error" in bad.json()


def test_internal_services_refuse_requests_without_the_gateway_secret(rack: RunningRack) -> None:
    for service in SERVICES:
        transport = httpx.HTTPTransport(uds=str(rack.data_dir / "run" / f"{service}.sock"))
        with httpx.Client(transport=transport, base_url=f"http://{service}") as client:
            for path in ("/check", "/apps", "/openapi.json"):
                response = client.get(path, headers={"x-rack-internal": "guess"})
                assert response.status_code == 403, (service, path)
                assert response.json() == {"error": "forbidden: internal service"}


def test_only_the_gateway_listens_on_tcp(rack: RunningRack) -> None:
    children = psutil.Process(rack.process.pid).children(recursive=True)
    assert len(children) == 7  # the fork server and the six it forked
    for child in children:
        listening = [c for c in child.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        if " ".join(child.cmdline()).split()[2:3] == ["services.gateway"]:  # (the fork server preloads it)
            assert [c.laddr.port for c in listening] == [int(rack.url.rsplit(":", 1)[1])]
            assert all(c.laddr.ip == "127.0.0.1" for c in listening)
        else:
            assert listening == [], child.cmdline()


def test_requests_are_logged_in_logfmt_without_the_password(rack: RunningRack) -> None:
    httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=("x", rack.password))
    log = rack.data_dir / "logs" / "rack.log"
    pattern = re.compile(
        r'gateway: ns=gateway at=request state=success status=200 method="GET" path="/apps" elapsed=\d+\.\d{3}$'
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        if any(pattern.search(line) for line in lines):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no request line for GET /apps in the rack log")
    assert rack.password not in log.read_text()
    assert rack.password not in rack.log.read_text()


def test_proxied_responses_carry_one_date_and_server_header(rack: RunningRack) -> None:
    response = httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=("x", rack.password))
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("server")) == 1
