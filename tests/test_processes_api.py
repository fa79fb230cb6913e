"""The processes API through the gateway: documented routes (websockets too), the run body, the metrics stream,
and the stream protocol spoken by a plain websocket client (no CLI)."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from shared import stream
from shared.stream import Channel
from tests.conftest import RunningRack


@dataclass
class App:
    name: str
    pid: str
    auth: tuple[str, str]


@pytest.fixture(scope="module")
def app(rack: RunningRack, busybox_image: str) -> Iterator[App]:
    """An app with one process (started as formation would, with the rack's labels)."""
    auth = ("convox", rack.password)
    name = f"api-{secrets.token_hex(3)}"
    assert httpx.post(f"{rack.url}/apps", verify=rack.verify, json={"name": name}, auth=auth).status_code == 201
    pid = subprocess.run(
        ["docker", "run", "-d", "--init", "--label", f"convox.rack={rack.name}", "--label", f"convox.app={name}",
         "--label", "convox.type=web", "--label", "convox.release=RAPIAPIAPIA", busybox_image, "sleep", "3600"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()[:12]  # fmt: skip
    try:
        yield App(name, pid, auth)
    finally:
        httpx.delete(f"{rack.url}/apps/{name}", verify=rack.verify, auth=auth, timeout=60)


def socket(rack: RunningRack, path: str) -> websockets.connect:
    token = httpx.BasicAuth("convox", rack.password)._auth_header
    return websockets.connect(
        rack.ws_url + path,
        ssl=rack.ssl,
        subprotocols=[stream.SUBPROTOCOL],  # type: ignore[list-item]
        additional_headers={"Authorization": token},
        compression=None,
        max_size=None,
    )


def test_every_process_route_is_documented_with_its_operation_id(rack: RunningRack) -> None:
    doc = httpx.get(f"{rack.url}/openapi.json", verify=rack.verify, auth=("x", rack.password)).json()
    operations = {
        op["operationId"]: (method, path) for path, item in doc["paths"].items() for method, op in item.items()
    }
    assert operations["process_list"] == ("get", "/apps/{app}/processes")
    assert operations["process_get"] == ("get", "/apps/{app}/processes/{pid}")
    assert operations["process_stop"] == ("delete", "/apps/{app}/processes/{pid}")
    assert operations["process_run"] == ("post", "/apps/{app}/services/{service}/processes")
    for op_id, path in (
        ("process_exec", "/apps/{app}/processes/{pid}/exec"),
        ("process_run_stream", "/apps/{app}/services/{service}/processes"),
        ("process_metrics", "/apps/{app}/processes/metrics"),
    ):
        assert operations[op_id] == ("get", path)
        op = doc["paths"][path]["get"]
        assert "101" in op["responses"] and "426" in op["responses"]
        assert "v1.stream.rack" in op["description"]
    exec_params = {p["name"] for p in doc["paths"]["/apps/{app}/processes/{pid}/exec"]["get"]["parameters"]}
    assert {"app", "pid", "command", "tty", "width", "height"} <= exec_params
    listed = doc["paths"]["/apps/{app}/processes"]["get"]
    assert {p["name"] for p in listed["parameters"]} >= {"service", "release"}
    assert listed["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"].endswith("/Process")
    assert doc["paths"]["/apps/{app}/services/{service}/processes"]["post"]["responses"]["201"]


def test_a_socket_path_without_an_upgrade_says_so(rack: RunningRack, app: App) -> None:
    for path in (f"/apps/{app.name}/processes/{app.pid}/exec", f"/apps/{app.name}/processes/metrics"):
        response = httpx.get(f"{rack.url}{path}", verify=rack.verify, auth=app.auth)
        assert response.status_code == 426
        assert "websocket" in response.json()["error"]


def test_list_get_and_filters(rack: RunningRack, app: App) -> None:
    listed = httpx.get(f"{rack.url}/apps/{app.name}/processes", verify=rack.verify, auth=app.auth).json()
    assert [p["id"] for p in listed] == [app.pid]
    process = listed[0]
    assert set(process) >= {
        "app",
        "command",
        "cpu",
        "host",
        "id",
        "image",
        "memory",
        "name",
        "ports",
        "release",
        "started",
    }
    assert (process["app"], process["name"], process["release"], process["command"]) == (
        app.name, "web", "RAPIAPIAPIA", "sleep 3600",
    )  # fmt: skip
    assert isinstance(process["cpu"], float) and 0 < process["memory"] < 1
    found = httpx.get(f"{rack.url}/apps/{app.name}/processes/{app.pid}", verify=rack.verify, auth=app.auth)
    assert found.json()["id"] == app.pid
    for query, expected in (("service=web", 1), ("service=worker", 0), ("release=RAPIAPIAPIA", 1), ("release=RX", 0)):
        listed = httpx.get(f"{rack.url}/apps/{app.name}/processes?{query}", verify=rack.verify, auth=app.auth)
        assert len(listed.json()) == expected
    missing = httpx.get(f"{rack.url}/apps/{app.name}/processes/0123456789ab", verify=rack.verify, auth=app.auth)
    assert (missing.status_code, missing.json()) == (404, {"error": "no such process: 0123456789ab"})


def test_run_body_is_validated(rack: RunningRack, app: App) -> None:
    url = f"{rack.url}/apps/{app.name}/services/web/processes"
    bad = httpx.post(url, json={"command": ["true"], "timeout": 0}, auth=app.auth, verify=rack.verify)
    assert bad.status_code == 400 and "timeout" in bad.json()["error"]
    bad_env = httpx.post(
        url, json={"command": ["true"], "environment": {"A=B": "x"}}, auth=app.auth, verify=rack.verify
    )
    assert bad_env.status_code == 400 and "invalid environment variable name" in bad_env.json()["error"]
    unreleased = httpx.post(url, json={"command": "true"}, auth=app.auth, verify=rack.verify)
    assert unreleased.status_code == 400 and "has no release yet" in unreleased.json()["error"]


async def messages(connection: websockets.ClientConnection) -> AsyncIterator[tuple[int, bytes]]:
    async for message in connection:
        assert isinstance(message, bytes)
        yield message[0], message[1:]


async def test_the_stream_protocol_with_a_plain_client(rack: RunningRack, app: App) -> None:
    path = f"/apps/{app.name}/processes/{app.pid}/exec?command=sh&command=-c&command=cat%3B+echo+e+%3E%262%3B+exit+3"
    async with socket(rack, path) as connection:
        assert connection.subprotocol == stream.SUBPROTOCOL
        await connection.send(stream.encode(Channel.STDIN, b"abc"))
        await connection.send(stream.close(Channel.STDIN))
        received = [m async for m in messages(connection)]
    assert b"".join(d for c, d in received if c == Channel.STDOUT) == b"abc"
    assert b"".join(d for c, d in received if c == Channel.STDERR) == b"e\n"
    assert received[-1] == (Channel.STATUS, b'{"exit_code": 3}')


async def test_a_tty_stream_takes_its_size_from_a_first_resize(rack: RunningRack, app: App) -> None:
    path = f"/apps/{app.name}/processes/{app.pid}/exec?command=stty&command=size&tty=true"
    async with socket(rack, path) as connection:
        await connection.send(stream.resize(123, 45))
        received = [m async for m in messages(connection)]
    assert received[0] == (Channel.STDOUT, b"45 123\r\n")
    assert stream.parse_status(received[-1][1]).exit_code == 0


async def test_bad_stream_requests_are_refused_before_the_upgrade(rack: RunningRack, app: App) -> None:
    from websockets.exceptions import InvalidStatus

    for path, status, error in (
        (f"/apps/{app.name}/processes/{app.pid}/exec", 400, "no command"),
        (f"/apps/{app.name}/processes/{app.pid}/exec?command=ls&width=0", 400, "width"),
        (f"/apps/{app.name}/processes/0123456789ab/exec?command=ls", 404, "no such process: 0123456789ab"),
        (f"/apps/nope-{app.name}/processes/{app.pid}/exec?command=ls", 404, f"no such app: nope-{app.name}"),
        (f"/apps/nope-{app.name}/processes/metrics", 404, f"no such app: nope-{app.name}"),
        (f"/apps/{app.name}/services/web/processes?command=true", 400, "has no release yet"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with socket(rack, path):
                pass
        assert refused.value.response.status_code == status, path
        assert error in json.loads(bytes(refused.value.response.body or b""))["error"], path


async def test_metrics_stream_sends_fresh_figures_every_second(rack: RunningRack, app: App) -> None:
    frames: list[tuple[float, list[dict[str, Any]]]] = []
    async with socket(rack, f"/apps/{app.name}/processes/metrics") as connection:
        assert connection.response is not None
        assert connection.response.headers["X-Metrics-Interval"] == "1"  # the local provider samples every second
        async for channel, payload in messages(connection):
            assert channel == Channel.STDOUT
            frames.append((time.monotonic(), json.loads(payload)))
            if len(frames) == 3:
                break
    assert all([p["id"] for p in frame] == [app.pid] for _, frame in frames)
    assert all(isinstance(frame[0]["cpu"], float) and frame[0]["memory"] > 0 for _, frame in frames)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    assert all(0.7 < gap < 1.5 for gap in gaps), gaps
