"""`convox ps`, `ps info`, `ps stop`, `exec` and `run` end to end: a rack started as users start it, an app
deployed with `convox deploy`, the CLI run as a user runs it — through a pseudo-terminal (pexpect) for the
interactive cases: a shell, the terminal's size at start and after a resize, Ctrl-C, exit codes, a killed
client, errors that leave the terminal as it was.

The CLI here talks to the rack over its own unix socket, as a user on the rack's machine does: every stream is
handed to the processes service, socket and all (shared/handoff.py). The other modules' streams go over HTTPS,
which the gateway pumps."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pexpect
import psutil
import pytest

from tests.conftest import ROOT, Cli, RunningRack

DSR = re.escape("\x1b[6n")
"""busybox's shell asks the terminal where its cursor is before each prompt; the tests answer like a terminal."""


@dataclass
class Deployed:
    name: str
    release: str
    pid: str
    other_app: str
    other_pid: str


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


def running_in(pid: str) -> str:
    return docker("top", pid, "-o", "pid,args", check=False)


def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def cli(cli: Cli, rack: RunningRack) -> Cli:
    """`convox` as a user on the rack's machine runs it: over the rack's own unix socket."""
    cli.env["CONVOX_HOST"] = rack.local_url
    return cli


@pytest.fixture(scope="module")
def deployed(rack: RunningRack, busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """An app deployed with `convox deploy` (process type web: `sleep 3600`), and another app's process."""
    work = tmp_path_factory.mktemp("ps-app")
    (work / "Dockerfile").write_text(f"FROM {busybox_image}\n")
    (work / "convox.yml").write_text(
        "environment:\n  - GREETING=hello\nservices:\n  web:\n    build: .\n    command: sleep 3600\n"
        "    environment:\n      - LEVEL=one\n"
    )
    env = rack.env(work / "config")
    env["PYTHONPATH"] = str(ROOT)
    name, other = f"ps-{secrets.token_hex(3)}", f"other-{secrets.token_hex(3)}"

    def convox(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env, cwd=work, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    convox("apps", "create", name)
    convox("apps", "create", other)
    convox("deploy", "--app", name)
    auth = ("convox", rack.password)
    release = httpx.get(f"{rack.url}/apps/{name}", verify=rack.verify, auth=auth).json()["release"]
    [process] = httpx.get(f"{rack.url}/apps/{name}/processes", verify=rack.verify, auth=auth).json()
    other_pid = docker(
        "run", "-d", "--init", "--label", f"convox.rack={rack.name}", "--label", f"convox.app={other}",
        "--label", "convox.type=web", busybox_image, "sleep", "3600",
    ).strip()[:12]  # fmt: skip
    try:
        yield Deployed(name, release, process["id"], other, other_pid)
    finally:
        for app in (name, other):
            subprocess.run([sys.executable, "-m", "cli.main", "apps", "delete", app], env=env, capture_output=True)


def spawn(cli: Cli, *args: str, rows: int = 24, cols: int = 80, timeout: float = 20) -> pexpect.spawn:
    """`convox ARGS` on a pseudo-terminal of ``rows`` x ``cols``."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "cli.main", *args],
        env=cli.env,
        cwd=str(cli.cwd),
        dimensions=(rows, cols),
        timeout=timeout,
    )


def prompt(child: pexpect.spawn) -> None:
    child.expect(DSR)
    child.send("\x1b[1;1R")


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)


def cooked(child: pexpect.spawn) -> bool:
    """Whether the terminal is as a shell leaves it (echo and line editing on), not in raw mode."""
    attributes = termios.tcgetattr(child.child_fd)  # a pty's master sees its terminal's attributes
    return bool(attributes[3] & termios.ECHO and attributes[3] & termios.ICANON)


# ---- ps ------------------------------------------------------------------------------------------------------


def test_ps_lists_processes_with_cpu_mem_and_started(cli: Cli, deployed: Deployed) -> None:
    out = cli("ps", "--app", deployed.name, check=True).stdout.splitlines()
    assert out[0].split() == ["ID", "NAME", "RELEASE", "CPU", "MEM", "STARTED", "COMMAND"]
    row = out[1]
    assert re.match(
        rf"^{deployed.pid}\s+web\s+{deployed.release}\s+\d+\.\d\d%\s+\d+\.\d\d%\s+"
        r"(\d+ (second|minute|hour)s? ago|just now)\s+sh -c 'sleep 3600'\s*$",
        row,
    ), row
    assert len(out) == 2
    ids = [line.split()[0] for line in out[1:]]
    assert [
        line.split()[0] for line in cli("ps", "--app", deployed.name, "--service", "web").stdout.splitlines()[1:]
    ] == ids
    assert cli("ps", "--app", deployed.name, "--service", "worker", check=True).stdout.splitlines()[1:] == []
    assert cli("ps", "--app", deployed.name, "--release", "RNOTTHISONE", check=True).stdout.splitlines()[1:] == []
    missing = cli("ps", "--app", "no-such-app")
    assert missing.returncode != 0 and missing.stderr.strip() == "ERROR: no such app: no-such-app"


def test_ps_info_and_stop(cli: Cli, deployed: Deployed) -> None:
    info = cli("ps", "info", deployed.pid, "--app", deployed.name, check=True).stdout
    fields = {line.split()[0]: line.split(maxsplit=1)[1].strip() for line in info.splitlines() if len(line.split()) > 1}
    assert (fields["Id"], fields["App"], fields["Name"], fields["Release"]) == (
        deployed.pid,
        deployed.name,
        "web",
        deployed.release,
    )
    assert re.fullmatch(r"\d+\.\d\d%", fields["CPU"]) and re.fullmatch(r"\d+\.\d\d%", fields["Memory"])
    wrong = cli("ps", "info", deployed.other_pid, "--app", deployed.name)
    assert wrong.returncode != 0 and wrong.stderr.strip() == f"ERROR: no such process: {deployed.other_pid}"

    pid = cli("run", "--app", deployed.name, "--detach", "web", "sleep", "600", check=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", pid)
    started = time.monotonic()
    stopped = cli("ps", "stop", pid, "--app", deployed.name, check=True)
    assert time.monotonic() - started < 8  # SIGTERM reached `sleep` itself: no 10 s grace to sit out
    assert f"Stopping {pid}... OK" in stopped.stderr
    assert pid not in cli("ps", "--app", deployed.name, check=True).stdout


def test_ps_watch_redraws_until_ctrl_c(cli: Cli, deployed: Deployed) -> None:
    child = spawn(cli, "ps", "--watch", "--app", deployed.name, cols=140)
    for _ in range(3):  # a frame a second
        child.expect("ID +NAME +RELEASE +CPU +MEM +STARTED +COMMAND")
        child.expect(deployed.pid)
    child.sendintr()
    child.expect(pexpect.EOF)
    assert cooked(child)
    assert finish(child) == 130  # Ctrl-C exits 130, as everywhere else


# ---- exec ----------------------------------------------------------------------------------------------------


def execs_on_record(rack: RunningRack) -> int:
    """How many execs the rack has on record (its processes' execs, for the reaper)."""
    with contextlib.closing(sqlite3.connect(f"file:{rack.data_dir / 'state.db'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM execs").fetchone()[0])


def test_exec_passes_stdin_eof_and_leaves_no_record(cli: Cli, rack: RunningRack, deployed: Deployed) -> None:
    result = cli("exec", "--app", deployed.name, deployed.pid, "cat", input="hi\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hi\n", "")
    eventually(lambda: execs_on_record(rack) == 0, within=5)  # written at its start, gone with its stream


def test_exec_runs_a_script_from_stdin(cli: Cli, deployed: Deployed, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo one\necho two >&2\nread -r missing || echo eof\nexit 3\n")
    with script.open() as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "exec", "--app", deployed.name, deployed.pid, "sh"],
            stdin=stdin,
            capture_output=True,
            text=True,
            env=cli.env,
            timeout=60,
        )
    assert (result.returncode, result.stdout, result.stderr) == (3, "one\neof\n", "two\n")


@pytest.mark.parametrize("code", [0, 1, 7])
def test_exec_exits_with_the_remote_exit_code(cli: Cli, deployed: Deployed, code: int) -> None:
    result = cli("exec", "--app", deployed.name, deployed.pid, "sh", "-c", f"exit {code}", input="")
    assert result.returncode == code, result.stderr


def test_exec_takes_everything_after_the_pid_as_the_command(cli: Cli, deployed: Deployed) -> None:
    result = cli("exec", "--app", deployed.name, deployed.pid, "ls", "-la", "--", "/bin/sh", input="")
    assert result.returncode == 0 and "/bin/sh -> /bin/busybox" in result.stdout
    shell = cli("exec", "--app", deployed.name, deployed.pid, "echo $GREETING-$LEVEL | tr a-z A-Z", input="")
    assert shell.stdout == "HELLO-ONE\n"  # one string runs under sh -c, with the app's environment


def test_exec_is_a_shell_on_a_terminal(cli: Cli, deployed: Deployed) -> None:
    child = spawn(cli, "exec", "--app", deployed.name, deployed.pid, "sh", rows=33, cols=111)
    prompt(child)
    child.sendline("stty size")
    child.expect("33 111")  # the terminal's size from the start
    prompt(child)
    child.setwinsize(40, 132)
    time.sleep(0.5)
    child.sendline("stty size")
    child.expect("40 132")  # and after a resize
    prompt(child)
    child.sendline("sleep 300")
    time.sleep(0.5)
    child.sendcontrol("c")  # Ctrl-C reaches the remote process, not the CLI
    prompt(child)
    child.sendline("echo still here; exit 7")
    child.expect("still here")
    child.expect(pexpect.EOF)
    assert cooked(child)  # raw mode was left on the way out
    assert finish(child) == 7


def test_exec_ctrl_c_ends_a_remote_command_with_130(cli: Cli, deployed: Deployed) -> None:
    child = spawn(cli, "exec", "--app", deployed.name, deployed.pid, "sleep", "300")
    eventually(lambda: "sleep 300" in running_in(deployed.pid))
    child.sendcontrol("c")
    assert finish(child) == 130


def test_exec_size_is_right_when_the_process_starts(cli: Cli, deployed: Deployed) -> None:
    for cols in (77, 150, 201):
        child = spawn(cli, "exec", "--app", deployed.name, deployed.pid, "stty", "size", rows=21, cols=cols)
        child.expect(f"21 {cols}")
        assert finish(child) == 0


def test_a_killed_client_leaves_no_process_behind(cli: Cli, deployed: Deployed) -> None:
    piped = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "exec", "--app", deployed.name, deployed.pid, "sleep", "4141"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=cli.env,
    )
    eventually(lambda: "sleep 4141" in running_in(deployed.pid))
    piped.kill()
    piped.wait()
    assert piped.stdin is not None
    piped.stdin.close()
    eventually(lambda: "sleep 4141" not in running_in(deployed.pid))

    child = spawn(cli, "exec", "--app", deployed.name, deployed.pid, "sh")
    prompt(child)
    child.sendline("sleep 4242")
    eventually(lambda: "sleep 4242" in running_in(deployed.pid))
    os.kill(child.pid, signal.SIGKILL)
    child.close()
    eventually(lambda: "sleep 4242" not in running_in(deployed.pid))


def test_sigterm_restores_the_terminal_and_ends_the_remote_process(cli: Cli, deployed: Deployed) -> None:
    child = spawn(cli, "exec", "--app", deployed.name, deployed.pid, "sh")
    prompt(child)
    child.sendline("sleep 4444")
    eventually(lambda: "sleep 4444" in running_in(deployed.pid))
    assert not cooked(child)  # raw while the session runs
    child.kill(signal.SIGTERM)
    child.expect(pexpect.EOF)
    assert cooked(child)
    assert finish(child) == 128 + signal.SIGTERM
    eventually(lambda: "sleep 4444" not in running_in(deployed.pid))


def test_errors_are_immediate_and_leave_the_terminal_alone(cli: Cli, deployed: Deployed) -> None:
    for app, pid, message in (
        (deployed.name, deployed.other_pid, f"no such process: {deployed.other_pid}"),  # another app's
        (deployed.name, "0123456789ab", "no such process: 0123456789ab"),  # nothing
        ("no-such-app", deployed.pid, "no such app: no-such-app"),
        ("convox", deployed.pid, f"no such process: {deployed.pid}"),  # the rack is not an app
    ):
        child = spawn(cli, "exec", "--app", app, pid, "sh")
        started = time.monotonic()
        child.expect(f"ERROR: {re.escape(message)}")
        child.expect(pexpect.EOF)
        assert cooked(child)
        assert finish(child) == 1
        assert time.monotonic() - started < 5
    assert "ERROR: no such process: ../x" in cli("exec", "--app", deployed.name, "../x", "ls").stderr


def test_a_stream_that_ends_without_a_status_is_an_error(cli: Cli, rack: RunningRack, deployed: Deployed) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "exec", "--app", deployed.name, deployed.pid, "sleep", "300"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
        text=True,
    )
    eventually(lambda: "sleep 300" in running_in(deployed.pid))
    service = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if "services.processes" in " ".join(p.info["cmdline"] or [])
        and str(rack.data_dir) in " ".join(p.info["cmdline"] or [])
    )
    service.kill()  # the processes service dies mid-stream (the supervisor restarts it)
    killed = time.monotonic()
    _, stderr = child.communicate(timeout=30)
    assert child.returncode != 0
    assert "ERROR: the stream ended without an exit status" in stderr
    # nor is its command left running: the owner's reaper ends an exec whose service died (kill -9 included)
    eventually(lambda: "sleep 300" not in running_in(deployed.pid), within=20)
    assert time.monotonic() - killed < 15  # a round of the reaper every 5 s
    reaped = f"at=process.reap id={deployed.pid[:12]} exec="
    eventually(lambda: reaped in rack.log.read_text() and 'reason="exec runner dead"' in rack.log.read_text(), 5)
    eventually(lambda: execs_on_record(rack) == 0, within=5)
    eventually(
        lambda: (
            httpx.get(
                f"{rack.url}/apps/{deployed.name}/processes", verify=rack.verify, auth=("x", rack.password)
            ).status_code
            == 200
        ),
        within=15,
    )


def test_a_run_whose_processes_service_is_killed_is_ended_by_the_owner(
    cli: Cli, rack: RunningRack, deployed: Deployed
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", "--app", deployed.name, "web", "sleep 300; echo never"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
        text=True,
    )
    interactive = ["ps", "-aq", "--filter", f"label=convox.app={deployed.name}", "--filter", "label=convox.interactive"]
    eventually(lambda: bool(docker(*interactive).strip()), within=20)
    [container] = docker(*interactive).split()
    service = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if "services.processes" in " ".join(p.info["cmdline"] or [])
        and str(rack.data_dir) in " ".join(p.info["cmdline"] or [])
    )
    service.kill()  # kill -9 of the service holding the run's stream: nothing of it can end the run
    killed = time.monotonic()
    child.communicate(timeout=30)
    assert child.returncode != 0
    eventually(lambda: not docker("ps", "-aq", "--filter", f"id={container}").strip(), within=20)
    assert time.monotonic() - killed < 15  # the owner's reaper: a round every 5 s, then the stop
    reaped = f'at=process.reap id={container[:12]} reason="runner dead"'  # the owner's doing
    eventually(lambda: reaped in rack.log.read_text(), within=5)


def test_an_idle_session_stays_open(cli: Cli, deployed: Deployed) -> None:
    child = spawn(
        cli, "exec", "--app", deployed.name, deployed.pid, "sh", "-c", "read line; echo got $line", timeout=60
    )
    time.sleep(25)  # longer than every keepalive interval on the way
    child.sendline("late")
    child.expect("got late")
    assert finish(child) == 0


# ---- run -----------------------------------------------------------------------------------------------------


def test_run_is_interactive_on_a_terminal(cli: Cli, deployed: Deployed) -> None:
    child = spawn(cli, "run", "--app", deployed.name, "web", "sh", rows=30, cols=100)
    prompt(child)
    child.sendline("stty size; echo $GREETING")
    child.expect("30 100")
    child.expect("hello")
    prompt(child)
    child.sendline("exit 4")
    assert finish(child) == 4


def test_run_with_pipes_expands_one_string_in_the_container(cli: Cli, deployed: Deployed) -> None:
    result = cli("run", "--app", deployed.name, "-e", "EXTRA=x y", "web", "echo $GREETING $LEVEL $EXTRA", input="")
    assert (result.returncode, result.stdout) == (0, "hello one x y\n")
    piped = cli("run", "--app", deployed.name, "web", "sh", "-c", "cat; exit 9", input="through\n")
    assert (piped.returncode, piped.stdout) == (9, "through\n")
    release = cli("run", "--app", deployed.name, "--release", deployed.release, "web", "true", input="")
    assert release.returncode == 0


def test_run_is_listed_while_it_runs_and_removed_after(cli: Cli, rack: RunningRack, deployed: Deployed) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", "--app", deployed.name, "web", "sleep 3; echo done"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=cli.env,
        text=True,
    )

    def listed() -> list[str]:
        return [
            line for line in cli("ps", "--app", deployed.name, check=True).stdout.splitlines()[1:] if "done" in line
        ]

    eventually(lambda: len(listed()) == 1)
    pid = listed()[0].split()[0]
    out, _ = child.communicate(timeout=30)
    assert (child.returncode, out) == (0, "done\n")
    eventually(lambda: not docker("ps", "-aq", "--filter", f"id={pid}").strip())


def test_later_runs_join_the_apps_sandbox_and_see_the_rack_network(cli: Cli, deployed: Deployed) -> None:
    sandboxes = ["ps", "-q", "--filter", f"label=convox.sandbox={deployed.name}"]
    first = cli("run", "--app", deployed.name, "web", "true", input="")
    assert first.returncode == 0
    eventually(lambda: len(docker(*sandboxes).split()) == 1)  # left behind by the first run, for the next
    [sandbox] = docker(*sandboxes).split()
    result = cli("run", "--app", deployed.name, "web", f"hostname; nslookup web.{deployed.name}", input="")
    assert result.returncode == 0, result.stderr
    web = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", deployed.pid)
    assert result.stdout.startswith(sandbox[:12]) and f"Address: {web.strip()}" in result.stdout
    assert sandbox not in cli("ps", "--app", deployed.name, check=True).stdout


def test_run_detached_prints_the_pid_and_cleans_up(cli: Cli, deployed: Deployed) -> None:
    pid = cli("run", "--app", deployed.name, "--detach", "web", "sleep 2", check=True).stdout.strip()
    assert pid in cli("ps", "--app", deployed.name, check=True).stdout
    eventually(lambda: not docker("ps", "-aq", "--filter", f"id={pid}").strip(), within=20)


def test_run_timeout_and_errors(cli: Cli, deployed: Deployed) -> None:
    started = time.monotonic()
    timed = cli("run", "--app", deployed.name, "--timeout", "2", "web", "sleep", "60", input="")
    assert timed.returncode == 124 and "ERROR: the process timed out after 2 s" in timed.stderr
    assert time.monotonic() - started < 20
    unknown = cli("run", "--app", deployed.name, "nope", "true", input="")
    assert unknown.returncode == 1 and "ERROR: no service named nope" in unknown.stderr
    bad_release = cli("run", "--app", deployed.name, "--release", "RNOPENOPENO", "web", "true", input="")
    assert bad_release.returncode == 1 and "ERROR: no such release: RNOPENOPENO" in bad_release.stderr
    bad_env = cli("run", "--app", deployed.name, "-e", "NOEQUALS", "web", "true", input="")
    assert bad_env.returncode != 0 and "ERROR: --env: expected KEY=VALUE" in bad_env.stderr


# ---- the password --------------------------------------------------------------------------------------------


async def test_every_stream_needs_the_password(rack: RunningRack, deployed: Deployed) -> None:
    import websockets
    from websockets.exceptions import InvalidStatus

    base = rack.ws_url
    paths = (
        f"/apps/{deployed.name}/processes/{deployed.pid}/exec?command=true",
        f"/apps/{deployed.name}/services/web/processes?command=true",
        f"/apps/{deployed.name}/processes/metrics",
    )
    for path in paths:
        for headers in ({}, {"Authorization": "Basic Y29udm94Ondyb25n"}):  # none, convox:wrong
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(base + path, additional_headers=headers, ssl=rack.ssl):
                    pass
            assert refused.value.response.status_code == 401


async def test_every_stream_over_the_racks_socket_needs_the_password(rack: RunningRack, deployed: Deployed) -> None:
    import websockets
    from websockets.exceptions import InvalidStatus

    path = str(rack.data_dir / "rack.sock")
    assert (rack.data_dir / "rack.sock").stat().st_mode & 0o777 == 0o600
    exec_path = f"/apps/{deployed.name}/processes/{deployed.pid}/exec?command=true"
    for headers in ({}, {"Authorization": "Basic Y29udm94Ondyb25n"}):  # none, convox:wrong
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.unix_connect(path, "ws://rack" + exec_path, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
    transport = httpx.AsyncHTTPTransport(uds=path)
    async with httpx.AsyncClient(transport=transport, base_url="http://rack") as client:
        assert (await client.get("/apps")).status_code == 401
        assert (await client.get("/apps", auth=("convox", rack.password))).status_code == 200


def gateway_sockets(rack: RunningRack) -> set[str]:
    """The sockets the rack's gateway holds open now (``socket:[INODE]``)."""
    gateway = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if "services.gateway" in " ".join(p.info["cmdline"] or [])
        and str(rack.data_dir) in " ".join(p.info["cmdline"] or [])
    )
    held = set()
    for fd in Path(f"/proc/{gateway.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing
            continue
        if target.startswith("socket:"):
            held.add(target)
    return held


@pytest.mark.parametrize("over", ["the rack's socket", "https"])
def test_a_stream_over_the_racks_socket_is_not_held_by_the_gateway(
    cli: Cli, rack: RunningRack, deployed: Deployed, over: str
) -> None:
    if over == "https":  # the other path, to show what the count sees when the gateway does pass the bytes
        cli.env["CONVOX_HOST"] = rack.url
    marker = "sleep 3131" if over == "https" else "sleep 3232"  # its own: no other test's process matches it
    before = gateway_sockets(rack)
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "exec", "--app", deployed.name, deployed.pid,
         "sh", "-c", f"{marker}; echo end"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env,
    )  # fmt: skip
    try:
        eventually(lambda: marker in running_in(deployed.pid), within=30)
        held = gateway_sockets(rack) - before
        for _ in range(10):  # what the gateway holds all along the stream (other requests' come and go)
            time.sleep(0.1)
            held &= gateway_sockets(rack)
        assert child.poll() is None
    finally:
        child.kill()
        child.communicate(timeout=30)
    if over == "https":
        assert len(held) >= 2  # the client's connection and the one to the service, pumped
    else:
        assert held == set()  # handed to the service: the gateway holds neither end
    eventually(lambda: marker not in running_in(deployed.pid), within=15)  # and no orphan either way


def test_a_wrong_password_is_an_error_before_the_terminal_changes(cli: Cli, deployed: Deployed) -> None:
    cli.env["CONVOX_PASSWORD"] = "wrong"
    child = spawn(cli, "exec", "--app", deployed.name, deployed.pid, "sh")
    child.expect("ERROR: invalid password")
    assert finish(child) == 1


def test_the_output_of_instant_one_offs_reaches_the_history_and_followers(
    cli: Cli, rack: RunningRack, deployed: Deployed, tmp_path: Path
) -> None:
    """50 detached and 5 attached one-offs that write a line and exit at once: every line is in a follower's
    stream and in the history, and every container goes."""
    followed = tmp_path / "followed.log"
    with followed.open("wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "logs", "--app", deployed.name, "--since", "1s"],
            stdout=out, stderr=subprocess.DEVNULL, env=cli.env, cwd=cli.cwd,
        )  # fmt: skip
    try:
        eventually(lambda: "web" in cli("ps", "--app", deployed.name, check=True).stdout)
        time.sleep(1)  # the follower's stream is open (its first batch comes at once; nothing to wait on here)
        run_id = secrets.token_hex(3)
        detached = [f"instant-{run_id}-{i}" for i in range(50)]
        auth = ("convox", rack.password)
        with httpx.Client(base_url=rack.url, auth=auth, verify=False, timeout=60) as client:
            pids = []
            for marker in detached:
                response = client.post(
                    f"/apps/{deployed.name}/services/web/processes", json={"command": f"echo {marker}"}
                )
                assert response.status_code == 201, response.text
                pids.append(response.json()["id"])
        attached = [f"attached-{run_id}-{i}" for i in range(5)]
        for marker in attached:
            result = cli("run", "--app", deployed.name, "web", f"echo {marker}", input="")
            assert (result.returncode, result.stdout) == (0, f"{marker}\n"), result.stderr

        def markers(text: str) -> set[str]:
            return {word for word in text.split() if word.startswith((f"instant-{run_id}-", f"attached-{run_id}-"))}

        wanted = set(detached) | set(attached)
        eventually(lambda: markers(followed.read_text(errors="replace")) == wanted, within=30)
        history = cli("logs", "--app", deployed.name, "--no-follow", "--since", "10m", check=True).stdout
        assert markers(history) == wanted
        for pid in pids:
            eventually(lambda: not docker("ps", "-aq", "--filter", f"id={pid}").strip(), within=20)  # noqa: B023
    finally:
        follower.terminate()
        follower.wait(10)
