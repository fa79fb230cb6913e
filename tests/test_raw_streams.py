"""Raw streams (``v1.raw.rack``, shared/rawstream.py) end to end: the session's rack, a process on the real
Docker Engine, the protocol spoken by hand over the rack's unix socket and `convox exec` with pipes (which
uses it there). Nothing is simulated."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest

from shared import rawstream
from tests.conftest import Cli, RunningRack
from tests.test_processes_cli import docker, eventually, finish, running_in, spawn


@dataclass(frozen=True)
class Target:
    app: str
    pid: str


def runs(target: Target, marker: str) -> bool:
    return marker in running_in(target.pid)


@pytest.fixture(scope="module")
def target(rack: RunningRack, busybox_image: str) -> Iterator[Target]:
    """An app and a process of it: a container of the app's process type started on the engine."""
    app = f"raw-{os.urandom(3).hex()}"
    with rack.client() as client:
        assert client.post("/apps", json={"name": app}).status_code == 201
        container = docker(
            "run", "-d", "--init", "--label", f"convox.rack={rack.name}", "--label", f"convox.app={app}",
            "--label", "convox.type=web", busybox_image, "sleep", "3600",
        ).strip()  # fmt: skip
        try:
            yield Target(app, container[:12])
        finally:
            client.delete(f"/apps/{app}")
            docker("rm", "-f", container, check=False)


def request(rack: RunningRack, path: str, query: list[tuple[str, str]], password: str | None = None) -> bytes:
    token = base64.b64encode(f"convox:{rack.password if password is None else password}".encode()).decode()
    return (
        f"GET {path}?{urlencode(query)} HTTP/1.1\r\nHost: rack\r\nAuthorization: Basic {token}\r\n"
        f"Connection: Upgrade\r\nUpgrade: {rawstream.RAW_PROTOCOL}\r\n\r\n"
    ).encode()


def open_raw(
    rack: RunningRack,
    target: Target,
    command: list[str],
    extra: list[tuple[str, str]] | None = None,
    password: str | None = None,
) -> tuple[socket.socket, int, bytes]:
    """A raw exec's connection over the rack's socket: the socket, the answer's status, what followed its head."""
    query = [("command", word) for word in command] + (extra or [])
    return open_path(rack, f"/apps/{target.app}/processes/{target.pid}/exec", query, password)


def open_path(
    rack: RunningRack, path: str, query: list[tuple[str, str]], password: str | None = None
) -> tuple[socket.socket, int, bytes]:
    """A raw stream of the route ``path`` over the rack's socket: the socket, the answer's status, what
    followed its head."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(rack.data_dir / "rack.sock"))
    sock.sendall(request(rack, path, query, password))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, int(head.split(b" ")[1]), rest


def frames(sock: socket.socket, data: bytes) -> list[tuple[int, bytes]]:
    """Every frame until the rack closes the connection."""
    while chunk := sock.recv(65536):
        data += chunk
    out = []
    while data:
        kind, size = data[0], int.from_bytes(data[4:8], "big")
        out.append((kind, data[8 : 8 + size]))
        data = data[8 + size :]
    return out


def refusal(sock: socket.socket, rest: bytes) -> str:
    while chunk := sock.recv(65536):
        rest += chunk
    return str(json.loads(rest)["error"])


def test_a_raw_exec_carries_the_engines_frames_and_ends_with_the_exit_status(rack: RunningRack, target: Target) -> None:
    sock, status, rest = open_raw(rack, target, ["sh", "-c", "echo out; echo err >&2; exit 5"])
    with sock:
        assert status == 101
        sock.shutdown(socket.SHUT_WR)  # no stdin
        got = frames(sock, rest)
    assert got[-1] == (rawstream.STATUS, b'{"exit_code": 5}')
    assert b"".join(p for k, p in got if k == rawstream.STDOUT) == b"out\n"
    assert b"".join(p for k, p in got if k == rawstream.STDERR) == b"err\n"


def test_convox_exec_with_pipes_moves_bytes_both_ways_intact_over_a_raw_stream(
    cli: Cli, rack: RunningRack, target: Target
) -> None:
    cli.env["CONVOX_HOST"] = rack.local_url
    data = os.urandom(8 << 20)
    piped = subprocess.run(
        [sys.executable, "-m", "cli.main", "exec", "--app", target.app, target.pid, "sh", "-c", "cat; echo done >&2"],
        input=data,
        capture_output=True,
        env=cli.env,
        timeout=120,
    )
    assert (piped.returncode, piped.stderr) == (0, b"done\n")
    assert hashlib.sha256(piped.stdout).hexdigest() == hashlib.sha256(data).hexdigest()

    def passed() -> bool:  # the service's line of the stream's end comes once the CLI has its status
        return any("raw=true" in line and "passed=true" in line for line in stream_ends(rack))

    # a raw stream, not the websocket, and the engine's connection was the CLI's: no byte crossed the rack
    eventually(passed, within=15)


def stream_ends(rack: RunningRack) -> list[str]:
    """The processes service's lines of the streams' ends (one comes once the CLI has its status)."""
    return [line for line in rack.log.read_text(errors="replace").splitlines() if "at=stream.end" in line]


def test_convox_exec_on_a_terminal_is_passed_the_engines_connection_and_its_resizes_apply(
    cli: Cli, rack: RunningRack, target: Target
) -> None:
    cli.env["CONVOX_HOST"] = rack.local_url
    before = len(stream_ends(rack))
    script = "stty size; read line; stty size; exit 3"
    child = spawn(cli, "exec", "--app", target.app, target.pid, "sh", "-c", script, rows=21, cols=77)
    child.expect("21 77")  # the size from the start
    child.setwinsize(30, 99)  # SIGWINCH: a resize frame on the rack's connection
    time.sleep(0.5)
    child.sendline("go")
    child.expect("30 99")
    assert finish(child) == 3

    def passed() -> bool:
        return any("passed=true tty=true" in line and "raw=true" in line for line in stream_ends(rack)[before:])

    eventually(passed, within=15)  # the terminal's bytes went between the CLI and the engine, not the rack


def test_a_raw_stream_goes_on_after_stdins_eof_until_the_process_ends(rack: RunningRack, target: Target) -> None:
    sock, status, rest = open_raw(rack, target, ["sh", "-c", "cat > /dev/null; sleep 0.3; echo after-eof"])
    with sock:
        assert status == 101
        sock.sendall(b"some input\n")
        sock.shutdown(socket.SHUT_WR)  # stdin's EOF: the process goes on, so does its output
        got = frames(sock, rest)
    assert got == [(rawstream.STDOUT, b"after-eof\n"), (rawstream.STATUS, b'{"exit_code": 0}')]


def test_a_raw_client_that_closes_ends_its_process(rack: RunningRack, target: Target) -> None:
    for half_closed_first in (False, True):
        marker = "sleep 4545" if half_closed_first else "sleep 4646"
        sock, status, _ = open_raw(rack, target, marker.split())
        assert status == 101
        eventually(functools.partial(runs, target, marker), within=15)
        if half_closed_first:  # stdin's EOF is not a goodbye: the process runs on
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.5)
            assert runs(target, marker)
        sock.close()
        eventually(lambda: not runs(target, marker), within=15)  # noqa: B023 - called before the loop goes on


def test_a_raw_stream_is_refused_with_a_clear_error_and_nothing_started(rack: RunningRack, target: Target) -> None:
    for command, extra, password, code, message in (
        (["ls"], [("tty", "true"), ("width", "0")], None, 400, "width"),
        ([], [], None, 400, "no command"),
        (["ls"], [], "wrong", 401, "invalid password"),
    ):
        sock, status, rest = open_raw(rack, target, command, extra, password=password)
        with sock:
            assert status == code
            assert message in refusal(sock, rest)
    sock, status, rest = open_raw(rack, Target(target.app, "0123456789ab"), ["ls"])
    with sock:
        assert (status, refusal(sock, rest)) == (404, "no such process: 0123456789ab")
    # over HTTPS there is no socket to hand over: a 400 that says where raw streams are served
    refused = httpx.get(
        f"{rack.url}/apps/{target.app}/processes/{target.pid}/exec",
        params={"command": "ls"},
        headers={"Connection": "Upgrade", "Upgrade": rawstream.RAW_PROTOCOL},
        auth=("convox", rack.password),
        verify=rack.verify,
    )
    assert refused.status_code == 400
    assert "unix socket only" in refused.json()["error"]


def test_a_followed_raw_log_stream_gets_every_new_line_once_in_order_through_quiet_spells_and_a_burst(
    rack: RunningRack, target: Target, busybox_image: str
) -> None:
    """The rack's socket hands new lines to a followed raw stream as the store writes them (rawserve.Direct);
    a client that stops reading during a burst makes them queue (or catch up from the history) instead."""
    sock, status, rest = open_path(rack, f"/apps/{target.app}/logs", [("follow", "true"), ("service", "ticker")])
    script = (
        "i=0; while [ $i -lt 200 ]; do echo tick-$i; i=$((i+1)); usleep 3000; done; "
        "seq 1 150000 | sed s/^/burst-/; j=0; while [ $j -lt 50 ]; do echo after-$j; j=$((j+1)); usleep 3000; done; "
        "sleep 3600"
    )
    container = docker(
        "run", "-d", "--init", "--label", f"convox.rack={rack.name}", "--label", f"convox.app={target.app}",
        "--label", "convox.type=ticker", busybox_image, "sh", "-c", script,
    ).strip()  # fmt: skip
    try:
        with sock:
            assert status == 101
            data, paused = rest, False
            while b"after-49\n" not in data:
                if not paused and b"burst-" in data:
                    paused = True
                    time.sleep(1.5)  # the client reads nothing for a while: its socket fills up
                chunk = sock.recv(65536)
                assert chunk, "the stream ended"
                data += chunk
    finally:
        docker("rm", "-f", container, check=False)
    got: list[list[bytes]] = []
    while data:
        kind, size = data[0], int.from_bytes(data[4:8], "big")
        assert kind == rawstream.STDOUT
        got.extend(line.split(b" ", 2)[1:] for line in data[8 : 8 + size].splitlines())
        data = data[8 + size :]
    want = [f"tick-{i}" for i in range(200)] + [f"burst-{i}" for i in range(1, 150001)]
    want += [f"after-{j}" for j in range(50)]
    ours = [text.decode() for source, text in got if source.startswith(b"ticker:")]  # the platform's events aside
    assert ours == want


def test_a_raw_log_stream_carries_whole_lines_then_its_status_and_an_unknown_app_is_refused(
    rack: RunningRack, target: Target
) -> None:
    def started() -> bool:
        with rack.client() as client:
            return b"web started" in client.get(f"/apps/{target.app}/logs", params={"since": "1h"}).content

    eventually(started, within=15)
    sock, status, rest = open_path(rack, f"/apps/{target.app}/logs", [("since", "1h"), ("follow", "false")])
    with sock:
        assert status == 101
        got = frames(sock, rest)
    assert got[-1] == (rawstream.STATUS, b'{"exit_code": 0}')
    lines = [p for k, p in got[:-1]]
    assert lines and all(kind == rawstream.STDOUT for kind, _ in got[:-1])
    assert all(payload.endswith(b"\n") for payload in lines)  # whole lines in each frame
    assert b"web started" in b"".join(lines)
    sock, status, rest = open_path(rack, "/apps/no-such-app/logs", [("follow", "false")])
    with sock:
        assert (status, refusal(sock, rest)) == (404, "no such app: no-such-app")

    def logged(status: int, path: str) -> bool:  # the gateway's request log: what the service answered
        return f'status={status} method="GET" path="{path}"' in rack.log.read_text(errors="replace")

    eventually(lambda: logged(404, "/apps/no-such-app/logs"), within=5)  # handed over, then refused
    assert logged(101, f"/apps/{target.app}/logs")
