"""Deploys end to end: `convox deploy` of a sample app built from a locally made base image, reached
through its balancer, scaled, re-configured, rolled back, and failing safely."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Cli, RunningRack, start_rack, stop_rack

SAMPLE = Path(__file__).parent / "apps" / "web"


@pytest.fixture
def web_app(cli: Cli, app_name: str, busybox_image: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    source = tmp_path / "web"
    shutil.copytree(SAMPLE, source)
    cli("apps", "create", app_name, check=True)
    try:
        yield app_name, source
    finally:
        cli("apps", "delete", app_name)


def fetch(address: str, path: str = "/", within: float = 10) -> str:
    deadline = time.monotonic() + within
    while True:
        try:
            response = httpx.get(f"http://{address}{path}", timeout=3)
            if response.status_code == 200:
                return response.text
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered 200 at {address}{path}")
        time.sleep(0.1)


def info(cli: Cli, app: str) -> dict[str, str]:
    lines = cli("apps", "info", app, check=True).stdout.splitlines()
    return {k: v.strip() for k, _, v in (line.partition(" ") for line in lines)}


def formation(cli: Cli, app: str) -> dict[str, list[str]]:
    lines = cli("scale", "--app", app, check=True).stdout.splitlines()
    assert lines[0].split() == ["NAME", "COUNT", "RUNNING", "MEMORY", "BALANCER"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def containers(rack: RunningRack, app: str, service: str) -> list[str]:
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=convox.rack={rack.name}",
            "--filter",
            f"label=convox.app={app}",
            "--filter",
            f"label=convox.type={service}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def deploy(cli: Cli, app: str, source: Path) -> subprocess.CompletedProcess[str]:
    return cli("deploy", str(source), "--app", app, timeout=300)


def test_deploy_builds_releases_and_serves_through_the_balancer(cli: Cli, web_app: tuple[str, Path]) -> None:
    app, source = web_app
    result = deploy(cli, app, source)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Promoting R[A-Z]{10}\.\.\. OK", result.stderr)
    details = info(cli, app)
    assert details["Status"] == "running"
    assert re.fullmatch(r"R[A-Z]{10}", details["Release"])
    assert fetch(details["Balancer"]) == "v1\n"
    rows = formation(cli, app)
    assert rows["web"][:3] == ["1", "1", "64"] and rows["web"][3] == details["Balancer"]
    assert rows["backend"] == ["1", "1", "32"]  # internal: no balancer
    releases = cli("releases", "--app", app, check=True).stdout.splitlines()
    assert releases[1].split()[:2] == [details["Release"], "active"]


def test_a_deploy_over_the_racks_socket_loads_no_http_websocket_or_drawing_library(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, source = web_app
    cli.env.update(CONVOX_HOST=rack.local_url, PYTHONPROFILEIMPORTTIME="1")  # every import, on stderr
    result = deploy(cli, app, source)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    # the standard library's client, and the build's log as a raw stream (no asyncio, no websocket library)
    assert "cli.unixhttp" in imported and not {"httpx", "rich", "asyncio", "websockets"} & imported
    uploaded = r"Uploading source\.\.\. \d+(\.\d)? (bytes|kB|MB) at \d+(\.\d)? [kMG]?B/s OK"
    assert any(re.fullmatch(uploaded, line) for line in lines), lines
    assert re.search(r"Promoting R[A-Z]{10}\.\.\. OK", result.stderr)
    assert fetch(info(cli, app)["Balancer"]) == "v1\n"
    missing = cli("apps", "info", "no-such-app")  # the rack's errors, as over HTTPS
    assert (missing.returncode, missing.stderr.splitlines()[-1]) == (1, "ERROR: no such app: no-such-app")


def test_scale_up_spreads_connections_and_scale_down_stops_processes(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, source = web_app
    assert deploy(cli, app, source).returncode == 0
    balancer = info(cli, app)["Balancer"]
    cli("scale", "web", "--count", "3", "--app", app, check=True)
    assert formation(cli, app)["web"][:2] == ["3", "3"]
    assert len(containers(rack, app, "web")) == 3
    hosts = {fetch(balancer, "/cgi-bin/env").splitlines()[1] for _ in range(12)}
    assert len(hosts) == 3
    cli("scale", "web", "--count", "1", "--app", app, check=True)
    assert formation(cli, app)["web"][:2] == ["1", "1"]
    assert len(containers(rack, app, "web")) == 1
    assert fetch(balancer) == "v1\n"
    cli("scale", "web", "--memory", "48", "--app", app, check=True)
    assert formation(cli, app)["web"][:3] == ["1", "1", "48"]


def test_env_change_and_rollback(cli: Cli, rack: RunningRack, web_app: tuple[str, Path]) -> None:
    app, source = web_app
    assert deploy(cli, app, source).returncode == 0
    first = info(cli, app)["Release"]
    balancer = info(cli, app)["Balancer"]
    assert fetch(balancer, "/cgi-bin/env").startswith("GREETING=hello\n")
    changed = cli("env", "set", "GREETING=bonjour-secret-value", "OTHER=1", "--promote", "--app", app, check=True)
    assert "Release: R" in changed.stdout
    assert fetch(balancer, "/cgi-bin/env").startswith("GREETING=bonjour-secret-value\n")
    assert cli("env", "get", "GREETING", "--app", app, check=True).stdout == "bonjour-secret-value\n"
    assert "OTHER=1" in cli("env", "--app", app, check=True).stdout.splitlines()
    cli("env", "unset", "OTHER", "--app", app, check=True)  # a release, not promoted
    assert "OTHER=1" not in cli("env", "--app", app, check=True).stdout
    rolled = cli("releases", "rollback", first, "--app", app, check=True)
    new = rolled.stdout.strip().removeprefix("Release: ")
    assert new != first and info(cli, app)["Release"] == new
    assert fetch(balancer, "/cgi-bin/env").startswith("GREETING=hello\n")
    time.sleep(0.5)
    assert "bonjour-secret-value" not in (rack.data_dir / "logs" / "rack.log").read_text()


def test_failed_health_check_keeps_the_old_release_serving(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, source = web_app
    assert deploy(cli, app, source).returncode == 0
    good = info(cli, app)
    (source / "www" / "index.html").write_text("v2\n")
    manifest = source / "convox.yml"
    manifest.write_text(manifest.read_text().replace("path: /\n", "path: /missing\n"))
    failed = deploy(cli, app, source)
    assert failed.returncode != 0
    assert "ERROR: release R" in failed.stderr and "failed to roll out" in failed.stderr
    after = info(cli, app)
    assert after["Status"] == "running"  # the previous release still serves
    assert after["Release"] == good["Release"]
    assert after["Failed"].startswith("R") and "health check" in after["Failed"]
    failed_release = after["Failed"].split()[0]
    releases = cli("releases", "--app", app, check=True).stdout
    assert re.search(rf"^{failed_release} +failed ", releases, re.MULTILINE), releases
    assert re.search(rf"^{good['Release']} +active ", releases, re.MULTILINE), releases
    assert fetch(good["Balancer"]) == "v1\n"
    assert len(containers(rack, app, "web")) == 1


def test_failed_build_exits_non_zero_and_makes_no_release(cli: Cli, web_app: tuple[str, Path]) -> None:
    app, source = web_app
    dockerfile = source / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("RUN chmod", "RUN false && chmod"))
    failed = deploy(cli, app, source)
    assert failed.returncode != 0
    assert "ERROR: " in failed.stderr
    assert cli("releases", "--app", app, check=True).stdout.splitlines()[1:] == []
    assert info(cli, app)["Release"] == ""


def test_internal_port_is_reachable_only_on_the_rack_network(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path], busybox_image: str
) -> None:
    app, source = web_app
    assert deploy(cli, app, source).returncode == 0
    (backend,) = containers(rack, app, "backend")
    ports = subprocess.run(["docker", "port", backend], capture_output=True, text=True, check=True).stdout
    assert ports.strip() == ""
    probe = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--label",
            f"convox.rack={rack.name}",
            "--network",
            f"convox-{rack.name}",
            busybox_image,
            "wget",
            "-qO-",
            f"http://backend.{app}:4000/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout == "v1\n", probe.stderr


def test_a_process_that_exits_is_restarted(cli: Cli, rack: RunningRack, web_app: tuple[str, Path]) -> None:
    app, source = web_app
    assert deploy(cli, app, source).returncode == 0
    (web,) = containers(rack, app, "web")
    subprocess.run(["docker", "exec", web, "sh", "-c", "kill $(pidof httpd)"], check=True)
    deadline = time.monotonic() + 15
    while True:
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.RestartCount}} {{.State.Running}}", web],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if state[0] != "0" and state[1] == "true":
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert fetch(info(cli, app)["Balancer"]) == "v1\n"


def test_a_restarted_rack_adopts_running_processes(tmp_path: Path, busybox_image: str) -> None:
    from tests.conftest import RACK_NAME, remove_labelled_containers

    name = RACK_NAME + "-adopt"
    data = tmp_path / "data"
    first = start_rack(data, name)
    try:
        user = Cli(first.env(tmp_path / "cfg"), tmp_path)
        source = tmp_path / "web"
        shutil.copytree(SAMPLE, source)
        user("apps", "create", "adopted", check=True)
        assert deploy(user, "adopted", source).returncode == 0
        before = info(user, "adopted")
        ids = sorted(containers(first, "adopted", "web") + containers(first, "adopted", "backend"))
        stop_rack(first)
        assert sorted(containers(first, "adopted", "web") + containers(first, "adopted", "backend")) == ids
        second = start_rack(data, name, port=int(first.url.rsplit(":", 1)[1]))
        try:
            after = info(user, "adopted")
            assert (after["Release"], after["Balancer"], after["Status"]) == (
                before["Release"],
                before["Balancer"],
                "running",
            )
            assert fetch(after["Balancer"]) == "v1\n"
            assert sorted(containers(second, "adopted", "web") + containers(second, "adopted", "backend")) == ids
        finally:
            stop_rack(second)
    finally:
        stop_rack(first)
        remove_labelled_containers(name)


ECHO_SERVICE = """  echo:
    build: .
    command: nc -ll -p 5000 -e cat
    port: 5000
    scale:
      memory: 16
"""


def echo(sock: socket.socket, text: bytes) -> bytes:
    sock.sendall(text)
    received = b""
    while len(received) < len(text):
        chunk = sock.recv(1024)
        if not chunk:
            break
        received += chunk
    return received


def test_the_balancer_keeps_open_connections_through_scale_and_roll_out(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, source = web_app
    manifest = source / "convox.yml"
    manifest.write_text(manifest.read_text() + ECHO_SERVICE)
    assert deploy(cli, app, source).returncode == 0
    balancer = formation(cli, app)["echo"][3]
    host, port = balancer.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as held:
        assert echo(held, b"one\n") == b"one\n"
        cli("scale", "echo", "--count", "2", "--app", app, check=True)
        assert echo(held, b"two\n") == b"two\n"
        with socket.create_connection((host, int(port)), timeout=10) as fresh:
            assert echo(fresh, b"new\n") == b"new\n"
        old = set(containers(rack, app, "echo"))
        rollout = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "env", "set", "X=1", "--promote", "--app", app],
            env=cli.env,
            cwd=cli.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len(set(containers(rack, app, "echo")) - old) < 2:  # the new release's echo processes
                assert time.monotonic() < deadline and rollout.poll() is None
                time.sleep(0.2)
            time.sleep(1)
            assert echo(held, b"three\n") == b"three\n"  # still served by its draining process
        finally:
            held.close()
            _, err = rollout.communicate(timeout=60)
        assert rollout.returncode == 0, err
    deadline = time.monotonic() + 10  # the roll-out ended once the new release served: the old ones stop now
    while old & set(containers(rack, app, "echo")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with socket.create_connection((host, int(port)), timeout=10) as after:
        assert echo(after, b"four\n") == b"four\n"


def test_bad_input_to_releases_environment_and_formation(
    rack: RunningRack, cli: Cli, web_app: tuple[str, Path]
) -> None:
    app, source = web_app
    assert deploy(cli, app, source).returncode == 0
    auth = ("x", rack.password)
    base = f"{rack.url}/apps/{app}"
    cases = [
        ("POST", "/environment", {"1BAD": "x"}, 400),
        ("POST", "/environment", {"GOOD": 5}, 400),
        ("POST", "/environment", ["A=1"], 400),
        ("DELETE", "/environment/NOT_SET", None, 404),
        ("POST", "/formation/web", {"count": -1}, 400),
        ("POST", "/formation/web", {"count": 1000}, 400),
        ("POST", "/formation/web", {"memory": 1}, 400),
        ("POST", "/formation/web", {}, 400),
        ("POST", "/formation/nope", {"count": 1}, 404),
        ("POST", "/releases/RNOTREALXXX/promote", None, 404),
        ("GET", "/releases/RNOTREALXXX", None, 404),
        ("POST", "/releases/RNOTREALXXX/rollback", None, 404),
    ]
    releases_before = httpx.get(f"{base}/releases", auth=auth, verify=rack.verify).json()
    for method, path, body, status in cases:
        response = httpx.request(method, base + path, json=body, auth=auth, verify=rack.verify)
        assert response.status_code == status, (method, path, response.text)
        assert set(response.json()) == {"error"}
    assert httpx.get(f"{base}/releases", auth=auth, verify=rack.verify).json() == releases_before
    assert httpx.get(f"{rack.url}/apps/nope-nope/formation", verify=rack.verify, auth=auth).status_code == 404


def test_an_app_asked_with_settled_answers_once_its_roll_out_has_ended(cli: Cli, web_app: tuple[str, Path]) -> None:
    """``GET /apps/APP?settled=S`` (what `convox deploy` waits with) holds its answer until the roll-out ends."""
    import json

    app, source = web_app
    manifest = source / "convox.yml"  # web listens 2 s after it starts: its roll-out lasts that long at least
    manifest.write_text(
        manifest.read_text().replace("command: httpd -f -p 3000", "command: sh -c 'sleep 2; exec httpd -f -p 3000")
        .replace("-h /www\n    port: 3000", "-h /www'\n    port: 3000", 1)
    )
    assert deploy(cli, app, source).returncode == 0
    cli("env", "set", "GREETING=settled", "--app", app, check=True)  # a release, not promoted
    releases = json.loads(cli("api", "get", f"/apps/{app}/releases", check=True).stdout)
    newest = releases[0]["id"]
    cli("api", "post", f"/apps/{app}/releases/{newest}/promote", check=True)
    answer = json.loads(cli("api", "get", f"/apps/{app}?settled=30", check=True).stdout)
    assert (answer["status"], answer["release"]) == ("running", newest), answer
    bad = cli("api", "get", f"/apps/{app}?settled=31")
    assert bad.returncode != 0 and "settled" in bad.stderr, bad.stderr
