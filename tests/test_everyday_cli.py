"""Everyday commands end to end on a real rack (`convox rack start`, an app deployed with `convox deploy`):
a rolling `convox restart`, `convox apps cancel` of a roll-out, `convox env edit`, `convox api post|put|delete`,
and status that tells the truth (an app never released is not running; a failed roll-out keeps it running)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Cli, RunningRack
from tests.test_deploy import SAMPLE, containers, deploy, fetch, info


@pytest.fixture
def web_app(cli: Cli, app_name: str, busybox_image: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The sample web app (web: public, backend: internal), deployed."""
    source = tmp_path / "web"
    shutil.copytree(SAMPLE, source)
    cli("apps", "create", app_name, check=True)
    try:
        result = deploy(cli, app_name, source)
        assert result.returncode == 0, result.stderr
        yield app_name, source
    finally:
        cli("apps", "delete", app_name)


def with_editor(cli: Cli, editor: str) -> Cli:
    return Cli({**cli.env, "EDITOR": editor, "VISUAL": ""}, cli.cwd)


def eventually(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


class Hammer:
    """GETs the balancer without pause in the background, counting what is refused or fails."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ok = 0
        self.failures: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while self.running:
                try:
                    response = client.get(f"http://{self.address}/", headers={"Connection": "close"})
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)

    def stop(self) -> None:
        self.running = False
        self.thread.join(10)


def test_restart_replaces_the_processes_without_refusing_a_request(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, _ = web_app
    balancer = info(cli, app)["Balancer"]
    web_before, backend_before = set(containers(rack, app, "web")), set(containers(rack, app, "backend"))
    hammer = Hammer(balancer)
    try:
        eventually(lambda: hammer.ok > 5)
        restarted = cli("restart", "web", "--app", app, timeout=180)
        assert restarted.returncode == 0, restarted.stderr
        assert "Restarting web... OK" in restarted.stderr
        served = hammer.ok
        eventually(lambda: hammer.ok > served + 5)
    finally:
        hammer.stop()
    assert hammer.failures == []
    web_after = set(containers(rack, app, "web"))
    assert len(web_after) == 1 and not web_after & web_before
    assert set(containers(rack, app, "backend")) == backend_before  # only the type named
    assert fetch(balancer) == "v1\n"
    # the restart's roll-out ends in the background (the owner's): a second one is refused until it has
    eventually(lambda: info(cli, app)["Status"] == "running", within=60)
    cli("restart", "--app", app, check=True, timeout=180)  # every type
    assert not set(containers(rack, app, "backend")) & backend_before
    assert not set(containers(rack, app, "web")) & web_after
    assert "restarted" in cli("logs", "--app", app, "--no-follow", "--since", "5m", check=True).stdout
    unknown = cli("restart", "wbe", "--app", app)
    assert unknown.returncode != 0
    assert "ERROR: no such process type: wbe (types: backend, web)" in unknown.stderr


def test_scale_of_an_unknown_type_names_the_valid_ones(cli: Cli, web_app: tuple[str, Path]) -> None:
    app, _ = web_app
    result = cli("scale", "wbe", "--count", "2", "--app", app)
    assert result.returncode != 0
    assert "ERROR: no such process type: wbe (types: backend, web)" in result.stderr


def test_apps_cancel_stops_a_roll_out_and_keeps_the_serving_release(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, source = web_app
    good = info(cli, app)
    nothing = cli("apps", "cancel", app)
    assert nothing.returncode != 0 and f"ERROR: app {app} is not updating" in nothing.stderr
    (source / "www" / "index.html").write_text("v2\n")
    manifest = source / "convox.yml"  # a roll-out that would wait a minute for a health check that never passes
    manifest.write_text(manifest.read_text().replace("path: /\n      grace: 1\n", "path: /missing\n      grace: 60\n"))
    assert "grace: 60" in manifest.read_text()
    cli("build", str(source), "--app", app, check=True, timeout=300)
    new = cli("releases", "--app", app, check=True).stdout.splitlines()[1].split()[0]
    promoting = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "releases", "promote", new, "--app", app],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
        cwd=cli.cwd,
    )
    try:
        eventually(lambda: info(cli, app)["Status"] == "updating" and len(containers(rack, app, "web")) == 2)
        started = time.monotonic()
        cancelled = cli("apps", "cancel", app, check=True)
        assert time.monotonic() - started < 15
        assert f"Release: {good['Release']} is serving" in cancelled.stdout
        _, stderr = promoting.communicate(timeout=30)
    finally:
        if promoting.poll() is None:
            promoting.kill()
            promoting.wait()
    assert promoting.returncode != 0 and f"release {new} failed to roll out (cancelled)" in stderr
    after = info(cli, app)
    assert (after["Status"], after["Release"]) == ("running", good["Release"])
    assert after["Failed"] == f"{new} (cancelled)"
    assert re.search(rf"^{new} +cancelled ", cli("releases", "--app", app, check=True).stdout, re.MULTILINE)
    assert len(containers(rack, app, "web")) == 1
    assert fetch(good["Balancer"]) == "v1\n"


def test_env_edit_opens_the_editor_and_promotes(cli: Cli, web_app: tuple[str, Path], tmp_path: Path) -> None:
    app, _ = web_app
    balancer = info(cli, app)["Balancer"]
    unchanged = with_editor(cli, "true")("env", "edit", "--app", app)
    assert (unchanged.returncode, unchanged.stdout) == (0, "No changes\n")
    editor = tmp_path / "editor.sh"  # what a user does in $EDITOR: change a value, add a line
    editor.write_text('#!/bin/sh\nprintf "GREETING=edited\\n# a comment\\nADDED=yes\\n" >> "$1"\n')
    editor.chmod(0o755)
    edited = with_editor(cli, str(editor))("env", "edit", "--promote", "--app", app)
    assert edited.returncode == 0, edited.stderr
    assert "Setting ADDED, GREETING... OK" in edited.stderr
    assert fetch(balancer, "/cgi-bin/env").startswith("GREETING=edited\n")
    assert cli("env", "--app", app, check=True).stdout.splitlines() == ["ADDED=yes", "GREETING=edited"]
    remover = tmp_path / "remover.sh"  # a line deleted: the variable goes
    remover.write_text('#!/bin/sh\nsed -i "/^ADDED=/d" "$1"\n')
    remover.chmod(0o755)
    removed = with_editor(cli, str(remover))("env", "edit", "--app", app)
    assert removed.returncode == 0 and "Setting ADDED... OK" in removed.stderr, removed.stderr
    assert cli("env", "--app", app, check=True).stdout.splitlines() == ["GREETING=edited"]
    failing = with_editor(cli, "false")("env", "edit", "--app", app)
    assert failing.returncode != 0 and "ERROR: the editor exited with code 1" in failing.stderr


def test_api_post_put_and_delete_beside_get(cli: Cli, app_name: str, tmp_path: Path) -> None:
    created = cli("api", "post", "/apps", "--data", json.dumps({"name": app_name}))
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == app_name
    assert json.loads(cli("api", "get", f"/apps/{app_name}", check=True).stdout)["status"] == "created"
    body = tmp_path / "env.json"
    body.write_text('{"GREETING": "from-a-file"}')
    release = json.loads(cli("api", "post", f"apps/{app_name}/environment", "--data", f"@{body}", check=True).stdout)
    assert release["env"] == {"GREETING": "from-a-file"}
    from_stdin = cli("api", "post", f"/apps/{app_name}/environment", "--data", "-", input='{"OTHER": "1"}')
    assert json.loads(from_stdin.stdout)["env"] == {"GREETING": "from-a-file", "OTHER": "1"}
    put = cli("api", "put", f"/apps/{app_name}", "--data", "{}")
    assert put.returncode != 0 and put.stderr.startswith("ERROR: ")  # no such route: the rack's answer, shown
    bad = cli("api", "post", "/apps", "--data", "{not json")
    assert bad.returncode != 0 and "ERROR: --data is not JSON" in bad.stderr
    deleted = cli("api", "delete", f"/apps/{app_name}")
    assert (deleted.returncode, deleted.stdout) == (0, "")
    assert cli("api", "get", f"/apps/{app_name}").stderr == f"ERROR: no such app: {app_name}\n"


def test_an_app_never_released_is_not_running(cli: Cli, app_name: str) -> None:
    cli("apps", "create", app_name, check=True)
    try:
        assert info(cli, app_name)["Status"] == "created"
        listed = cli("apps", check=True).stdout
        assert re.search(rf"^{app_name} +created", listed, re.MULTILINE)
    finally:
        cli("apps", "delete", app_name)


def web_pid(cli: Cli, app: str) -> str:
    rows = cli("ps", "--app", app, check=True).stdout.splitlines()[1:]
    return next(row.split()[0] for row in rows if row.split()[1] == "web")


def digest(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def test_cp_round_trips_a_100_mib_file_and_a_directory(cli: Cli, web_app: tuple[str, Path], tmp_path: Path) -> None:
    import os

    app, _ = web_app
    pid = web_pid(cli, app)
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        for _ in range(100):
            handle.write(os.urandom(1 << 20))
    sent = cli("cp", str(big), f"{pid}:/tmp/big.bin", "--app", app, timeout=300)
    assert sent.returncode == 0, sent.stderr
    size = cli("exec", "--app", app, pid, "sh", "-c", "wc -c < /tmp/big.bin", check=True).stdout.strip()
    assert size == str(100 << 20)
    back = tmp_path / "back.bin"
    got = cli("cp", f"{pid}:/tmp/big.bin", str(back), "--app", app, timeout=300)
    assert got.returncode == 0, got.stderr
    assert digest(back) == digest(big)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    cli("cp", str(tree), f"{pid}:/srv/tree", "--app", app, check=True)
    listed = cli("exec", "--app", app, pid, "sh", "-c", "cat /srv/tree/a.txt /srv/tree/sub/b.txt", check=True)
    assert listed.stdout == "alpha\nbeta\n"
    into = tmp_path / "into"
    into.mkdir()
    cli("cp", f"{pid}:/srv/tree", str(into), "--app", app, check=True)  # an existing directory: under its name
    assert (into / "tree" / "sub" / "b.txt").read_text() == "beta\n"
    cli("cp", f"{pid}:/srv/tree/", str(tmp_path / "renamed"), "--app", app, check=True)
    assert (tmp_path / "renamed" / "a.txt").read_text() == "alpha\n"

    missing = cli("cp", f"{pid}:/no/such/file", str(tmp_path / "x"), "--app", app)
    assert missing.returncode != 0 and missing.stderr.startswith("ERROR: ")
    assert not (tmp_path / "x").exists()
    neither = cli("cp", str(big), str(tmp_path / "y"), "--app", app)
    assert neither.stderr == "ERROR: one side must be a process: PID:/path\n"


@pytest.fixture
def redis_service(cli: Cli, rack: RunningRack) -> Iterator[str]:
    """A redis backing service from the offline image of `make images`."""
    from tests.test_services import LOCAL_IMAGES, require_images

    require_images()
    name = f"cache-{secrets.token_hex(2)}"
    cli("rack", "params", "set", f"redis_image={LOCAL_IMAGES['redis_image']}", check=True)
    created = cli("services", "create", "redis", "--name", name, timeout=300)
    assert created.returncode == 0, created.stderr
    try:
        yield name
    finally:
        cli("services", "delete", name, timeout=120)


def test_services_proxy_reaches_the_server_from_a_local_port(cli: Cli, rack: RunningRack, redis_service: str) -> None:
    from tests.conftest import free_port

    with rack.client(timeout=30) as api:
        url = api.get(f"/services/{redis_service}", params={"reveal": "true"}).json()["url"]
        refused = api.get(f"/services/{redis_service}/proxy")  # a plain GET: the path is a websocket
        assert refused.status_code == 426 and "websocket" in refused.json()["error"]
    password = url.split("://:", 1)[1].split("@", 1)[0]
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "services", "proxy", redis_service, "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
        cwd=cli.cwd,
    )
    try:
        assert proxy.stderr is not None
        assert proxy.stderr.readline() == f"Proxying 127.0.0.1:{port} to {redis_service} (Ctrl-C stops)\n"

        def ask(conn: socket.socket, *commands: str) -> bytes:
            conn.sendall("".join(f"{c}\r\n" for c in commands).encode())
            answer = b""
            while answer.count(b"\r\n") < len(commands) + commands[-1].startswith("GET"):
                chunk = conn.recv(4096)
                assert chunk, f"the proxy closed the connection; so far {answer!r}"
                answer += chunk
            return answer

        with socket.create_connection(("127.0.0.1", port), timeout=30) as first:
            assert ask(first, f"AUTH {password}", "PING", "SET greeting hello") == b"+OK\r\n+PONG\r\n+OK\r\n"
            with socket.create_connection(("127.0.0.1", port), timeout=30) as second:  # a connection of its own
                assert ask(second, f"AUTH {password}", "GET greeting") == b"+OK\r\n$5\r\nhello\r\n"
        proxy.send_signal(signal.SIGINT)
        assert proxy.wait(30) == 130
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()
        if proxy.stderr is not None:
            proxy.stderr.close()
    missing = cli("services", "proxy", "no-such-service")
    assert missing.returncode != 0 and "ERROR: no such service: no-such-service" in missing.stderr


def test_ps_started_is_the_last_start_and_ps_info_lists_the_ports(
    cli: Cli, rack: RunningRack, web_app: tuple[str, Path]
) -> None:
    app, _ = web_app
    pid = web_pid(cli, app)

    def started() -> str:
        listed = json.loads(cli("api", "get", f"/apps/{app}/processes", check=True).stdout)
        return str(next(p["started"] for p in listed if p["id"] == pid))

    before = started()
    # the process dies; the engine's restart policy starts the same container again
    subprocess.run(["docker", "exec", pid, "killall", "-9", "httpd"], capture_output=True, check=False)
    eventually(lambda: started() > before)
    lines = cli("ps", "info", pid, "--app", app, check=True).stdout.splitlines()
    shown = {key: value.strip() for key, _, value in (line.partition(" ") for line in lines)}
    balancer = info(cli, app)["Balancer"].rpartition(":")[2]
    assert shown["Ports"] == f"{balancer}:3000"  # the mapping its balancer serves, as Convox shows it
    assert shown["Started"].endswith(("seconds ago", "second ago", "just now")), shown["Started"]
