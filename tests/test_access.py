"""Scoped, expiring tokens (`convox rack access`): accepted instead of the password by the API and the CLI; a
read token changes nothing (every operation of the OpenAPI document tried, websockets included); an expired
one is 401; and the same-origin rule for what a browser could be made to send."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from services.gateway.tokens import issue, parse_duration
from tests.conftest import Cli, RunningRack

SAFE = {"get", "head", "options"}
STREAMS_WRITE = (
    "/apps/{app}/processes/{pid}/exec?command=true",
    "/apps/{app}/services/web/processes?command=true",
    "/services/{app}/export",  # a dump runs the service's tool and hands out all its data
    "/services/{app}/import",
)
STREAMS_READ = ("/apps/{app}/logs", "/apps/{app}/processes/metrics", "/system/logs")


def token(rack: RunningRack, role: str, duration: str = "1h") -> str:
    made = httpx.post(
        f"{rack.url}/system/access", json={"role": role, "duration": duration}, auth=("x", rack.password),
        verify=rack.verify,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["role"] == role
    return str(made.json()["token"])


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_a_read_token_reads_but_every_operation_that_changes_something_is_403(rack: RunningRack) -> None:
    read = token(rack, "read")
    doc = httpx.get(f"{rack.url}/openapi.json", auth=("jwt", read), verify=rack.verify).json()
    tried = 0
    with httpx.Client(base_url=rack.url, auth=("jwt", read), verify=rack.verify, timeout=30) as http:
        for path, item in doc["paths"].items():
            for method in item:
                response = http.request(method.upper(), concrete(path), json={})
                tried += 1
                if method in SAFE:
                    assert response.status_code not in (401, 403), (method, path, response.text)
                else:
                    assert response.status_code == 403, (method, path, response.text)
                    assert response.json()["error"].startswith("a read token cannot change the rack")
                if item[method].get("security") != []:
                    assert {"401", "403"} <= set(item[method]["responses"]), (method, path)
    assert tried >= 20


async def test_a_read_token_opens_only_the_read_streams(rack: RunningRack) -> None:
    read = token(rack, "read")
    headers = {"Authorization": f"Bearer {read}"}
    for path in STREAMS_WRITE:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(rack.ws_url + path.format(app="x1", pid="x1"), additional_headers=headers,
                                          ssl=rack.ssl):  # fmt: skip
                pass
        assert refused.value.response.status_code == 403, path
    for path in STREAMS_READ:
        try:
            async with websockets.connect(rack.ws_url + path.format(app="x1"), additional_headers=headers,
                                          ssl=rack.ssl, open_timeout=30):  # fmt: skip
                pass
        except InvalidStatus as exc:  # an unknown app is 404, never a refusal of the token
            assert exc.response.status_code not in (401, 403), path


def test_an_expired_or_forged_token_is_401(rack: RunningRack) -> None:
    key = bytes.fromhex((rack.data_dir / "token.key").read_text().strip())
    expired, _ = issue(key, "write", 60, now=time.time() - 120)
    response = httpx.get(f"{rack.url}/apps", auth=("jwt", expired), verify=rack.verify)
    assert (response.status_code, response.json()) == (401, {"error": "token expired"})
    forged, _ = issue(b"k" * 32, "write", 3600)
    response = httpx.get(f"{rack.url}/apps", auth=("jwt", forged), verify=rack.verify)
    assert (response.status_code, response.json()) == (401, {"error": "invalid token"})


def test_only_the_password_makes_tokens_and_bad_requests_are_400(rack: RunningRack) -> None:
    for role in ("read", "write"):
        made = httpx.post(f"{rack.url}/system/access", json={"role": "write"}, auth=("jwt", token(rack, role)),
                          verify=rack.verify)  # fmt: skip
        assert made.status_code == 403
    for body in ({"role": "admin"}, {"role": "read", "duration": "forever"}, {"role": "read", "duration": "0s"}):
        bad = httpx.post(f"{rack.url}/system/access", json=body, auth=("x", rack.password), verify=rack.verify)
        assert bad.status_code == 400, body
    assert parse_duration("1h30m") == 5400 and parse_duration("7d") == 7 * 86400


def test_the_cli_makes_and_uses_tokens(cli: Cli, rack: RunningRack, app_name: str, tmp_path: Path) -> None:
    made = cli("rack", "access", "--role", "read", "--duration", "1h", check=True)
    read = made.stdout.strip()
    assert read.count(".") == 2 and "read token, expires" in made.stderr
    reader = Cli({**cli.env, "CONVOX_PASSWORD": read}, cli.cwd)
    assert reader("apps", check=True).returncode == 0
    refused = reader("apps", "create", app_name)
    assert refused.returncode != 0
    assert refused.stderr.strip().endswith("ERROR: a read token cannot change the rack (POST /apps)")
    write = cli("rack", "access", "--role", "write", "--duration", "10m", check=True).stdout.strip()
    writer = Cli({**cli.env, "CONVOX_PASSWORD": write}, cli.cwd)
    writer("apps", "create", app_name, check=True)
    writer("apps", "delete", app_name, check=True)
    env = {k: v for k, v in cli.env.items() if k != "CONVOX_PASSWORD"} | {"CONVOX_CONFIG": str(tmp_path / "c")}
    Cli(env, cli.cwd)("login", rack.url, input=read + "\n", check=True)
    assert Cli(env, cli.cwd)("apps", check=True).returncode == 0


def test_a_state_changing_request_or_a_websocket_from_another_origin_is_403(rack: RunningRack) -> None:
    auth = ("x", rack.password)
    evil = {"Origin": "https://evil.example"}
    crossed = httpx.post(f"{rack.url}/apps", json={"name": "evil1"}, auth=auth, headers=evil, verify=rack.verify)
    assert crossed.status_code == 403
    assert crossed.json() == {"error": "cross-site request refused: origin https://evil.example is not this rack"}
    assert httpx.get(f"{rack.url}/apps/evil1", auth=auth, verify=rack.verify).status_code == 404
    assert httpx.get(f"{rack.url}/apps", auth=auth, headers=evil, verify=rack.verify).status_code == 200
    own = {"Origin": rack.url}
    same = httpx.post(f"{rack.url}/apps", json={"name": "B"}, auth=auth, headers=own, verify=rack.verify)
    assert same.status_code == 400  # through to the apps service, which refuses the name


async def test_a_websocket_from_another_origin_is_403(rack: RunningRack) -> None:
    headers = {"Authorization": httpx.BasicAuth("x", rack.password)._auth_header}
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(rack.ws_url + "/system/logs", additional_headers=headers, ssl=rack.ssl,
                                      origin="https://evil.example"):  # type: ignore[arg-type]  # fmt: skip
            pass
    assert refused.value.response.status_code == 403
