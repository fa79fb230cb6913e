"""`convox rack start`: six supervised processes, restarts, a stored password, clean stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from shared.config import SERVICES
from tests.conftest import RACK_NAME, start_rack, stop_rack

EXPECTED = {"gateway", "apps", "processes", "logs", "builds", "provisioner"}


def services_of(pid: int) -> dict[str, psutil.Process]:
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline()).split()  # a forked service's title is one string (see forkserver)
        except psutil.NoSuchProcess:  # it ended since the listing (a service dying with its fork server)
            continue
        if "-m" in cmdline:
            module = cmdline[cmdline.index("-m") + 1]
            if module != "services.forkserver":
                found[module.removeprefix("services.")] = child
    return found


def test_each_service_is_its_own_process_named_by_its_command_line(tmp_path: Path, docker_engine: str) -> None:
    rack = start_rack(tmp_path / "data", RACK_NAME + "-sup1")
    try:
        assert set(services_of(rack.process.pid)) == EXPECTED
    finally:
        stop_rack(rack)


def test_a_service_killed_is_restarted_within_two_seconds_and_keeps_its_state(
    tmp_path: Path, docker_engine: str
) -> None:
    rack = start_rack(tmp_path / "data", RACK_NAME + "-sup2")
    auth = ("x", rack.password)
    try:
        created = httpx.post(f"{rack.url}/apps", verify=rack.verify, json={"name": "survivor"}, auth=auth)
        assert created.status_code == 201
        old = services_of(rack.process.pid)["apps"]
        old.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with rack.client(timeout=5) as http:
            while True:
                response = http.get("/apps/survivor")
                if response.status_code == 200:
                    break
                assert time.monotonic() - killed < 2.0, "apps did not come back within 2 s"
                time.sleep(0.02)
        new = services_of(rack.process.pid)["apps"]
        assert new.pid != old.pid
        log = (rack.data_dir / "logs" / "rack.log").read_text()
        assert "at=exit service=apps code=-9" in log
        assert "at=restart service=apps" in log
    finally:
        stop_rack(rack)


def test_state_and_password_survive_a_rack_restart(tmp_path: Path, docker_engine: str) -> None:
    data = tmp_path / "data"
    first = start_rack(data, RACK_NAME + "-sup3")
    auth = ("x", first.password)
    httpx.post(f"{first.url}/apps", verify=first.verify, json={"name": "durable"}, auth=auth).raise_for_status()
    stop_rack(first)
    second = start_rack(data, RACK_NAME + "-sup3", password="ignored-after-first-start")
    try:
        assert second.password == first.password
        response = httpx.get(f"{second.url}/apps/durable", verify=second.verify, auth=auth)
        assert response.status_code == 200
    finally:
        stop_rack(second)


def test_generated_password_is_stored_privately_and_printed_once(tmp_path: Path, docker_engine: str) -> None:
    data = tmp_path / "data"
    first = start_rack(data, RACK_NAME + "-sup4", password=None)
    stop_rack(first)
    password_file = data / "password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert len(first.password) >= 24
    output = first.log.read_text()
    assert output.count(first.password) == 1
    second = start_rack(data, RACK_NAME + "-sup4", password=None)
    stop_rack(second)
    assert second.log.read_text().count(first.password) == 1  # the same log file: still only the first time


def test_sigterm_stops_every_process(tmp_path: Path, docker_engine: str) -> None:
    rack = start_rack(tmp_path / "data", RACK_NAME + "-sup5")
    children = list(services_of(rack.process.pid).values())
    rack.process.send_signal(signal.SIGTERM)
    assert rack.process.wait(20) == 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []
    assert not (rack.data_dir / "run" / "processes.json").exists()


def test_sigint_stops_every_process(tmp_path: Path, docker_engine: str) -> None:
    rack = start_rack(tmp_path / "data", RACK_NAME + "-sup6")
    children = list(services_of(rack.process.pid).values())
    os.kill(rack.process.pid, signal.SIGINT)
    assert rack.process.wait(20) == 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []


async def test_the_rack_log_is_kept_to_two_bounded_files(tmp_path: Path) -> None:
    from services.supervisor import Supervisor

    supervisor = Supervisor(tmp_path, "127.0.0.1", 0, log_max_bytes=1000)
    writer = asyncio.create_task(supervisor.write_log())
    for n in range(30):
        supervisor.emit("gateway", f"ns=gateway at=request line={n:04d}")
    rotated = tmp_path / "logs" / "rack.log.1"
    while not rotated.exists():  # noqa: ASYNC110 - a file appearing has no event to wait on
        await asyncio.sleep(0.01)
    for n in range(30, 35):
        supervisor.emit("gateway", f"ns=gateway at=request line={n:04d}")
    await supervisor.lines.put(None)
    await asyncio.wait_for(writer, 10)
    current = (tmp_path / "logs" / "rack.log").read_text().splitlines()
    previous = rotated.read_text().splitlines()
    assert [line[-4:] for line in previous] == [f"{n:04d}" for n in range(30)]
    assert [line[-4:] for line in current] == [f"{n:04d}" for n in range(30, 35)]


def test_sockets_dirs_log_and_state_are_private_even_when_they_were_there_before(
    tmp_path: Path, docker_engine: str
) -> None:
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    (data / "logs").mkdir()
    os.chmod(data, 0o755)
    os.chmod(data / "run", 0o777)
    (data / "logs" / "rack.log").write_text("from before\n")
    os.chmod(data / "logs" / "rack.log", 0o644)
    rack = start_rack(data, RACK_NAME + "-sup7")
    try:
        modes = {
            "data": data,
            "run": data / "run",
            "logs": data / "logs",
        }
        for name, directory in modes.items():
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, name
        sockets = sorted((data / "run").glob("*.sock"))
        assert {p.stem for p in sockets} == set(SERVICES)
        for sock in sockets:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600, sock.name
        for file in ("logs/rack.log", "state.db", "state.db-wal", "password"):
            assert stat.S_IMODE((data / file).stat().st_mode) == 0o600, file
    finally:
        stop_rack(rack)


def test_sigint_stops_a_rack_started_in_the_background(tmp_path: Path, docker_engine: str) -> None:
    """A non-interactive shell starts a background job (`make run &`) with SIGINT ignored; the rack still
    stops cleanly on SIGINT (what Ctrl-C or `kill -INT` sends to the job)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    data_dir = tmp_path / "data"
    port = free_port()
    password = "background-password-" + RACK_NAME
    env = dict(os.environ, RACK_NAME=RACK_NAME + "-sup7", CONVOX_PASSWORD=password, PYTHONUNBUFFERED="1")
    command = f"{sys.executable} -m cli.main rack start --insecure-http --port {port} --data-dir {data_dir} & wait"
    shell = subprocess.Popen(
        ["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "the rack did not answer"
            assert shell.poll() is None, "the rack exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/check", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        (rack,) = psutil.Process(shell.pid).children()
        children = list(services_of(rack.pid).values())
        rack.send_signal(signal.SIGINT)
        assert shell.wait(20) == 0  # the shell's `wait` hands on the rack's own exit code
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
    finally:
        if shell.poll() is None:
            shell.kill()
        shell.wait()


def test_make_run_installs_only_what_the_rack_needs_and_make_test_the_dev_extra(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import ROOT

    def planned(target: str) -> str:
        venv = tmp_path / "venv"  # a venv that does not exist: make plans every step, runs none (-n)
        return subprocess.run(
            ["make", "-n", "-B", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    run = planned("run")
    assert "pip install -e .\n" in run and ".[dev]" not in run
    assert "rack start" in run
    assert "pip install -e '.[dev]'" in planned("test")
    assert "pip install -e '.[dev]'" in planned("lint")


async def test_a_child_line_over_64_kib_is_cut_and_the_child_keeps_running(tmp_path: Path) -> None:
    from services.supervisor import MAX_LINE, Child, Supervisor

    supervisor = Supervisor(tmp_path, "127.0.0.1", 0)
    program = (
        "import sys\n"
        "sys.stdout.write('a' * 300_000 + '\\n')\n"
        "print('after', flush=True)\n"
        "sys.stdout.write('b' * 200_000)\n"  # a long last line with no newline at all
        "sys.stdout.flush()\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    child = Child("apps", [], None)
    assert process.stdout is not None
    await asyncio.wait_for(supervisor.pump(child, process.stdout), 30)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    lines = []
    while not supervisor.lines.empty():
        entry = supervisor.lines.get_nowait()
        assert entry is not None
        lines.append(entry.split(" ", 1)[1].rstrip("\n"))
    assert lines == [
        "apps: " + "a" * MAX_LINE + f" [line cut at {MAX_LINE} bytes]",
        "apps: after",
        "apps: " + "b" * MAX_LINE + f" [line cut at {MAX_LINE} bytes]",
    ]


async def test_a_stdout_nobody_reads_never_blocks_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.supervisor import Supervisor

    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stuck)
    supervisor = Supervisor(tmp_path, "127.0.0.1", 0)
    began = time.monotonic()
    for n in range(20_000):  # far more than the pipe holds
        supervisor.emit("gateway", f"ns=gateway at=request n={n} " + "x" * 100)
    assert time.monotonic() - began < 5
    assert supervisor.console_dropped > 0
    os.close(read_end)  # the writer thread's blocked write fails now and it carries on
    monkeypatch.undo()
    with contextlib.suppress(OSError):
        stuck.close()


def test_services_are_forks_of_one_fork_server_and_share_its_pages(tmp_path: Path, docker_engine: str) -> None:
    rack = start_rack(tmp_path / "data", RACK_NAME + "-sup-fork")
    try:
        services = services_of(rack.process.pid)
        [server] = [
            p
            for p in psutil.Process(rack.process.pid).children()
            if "services.forkserver" in " ".join(p.cmdline())
        ]
        assert {p.ppid() for p in services.values()} == {server.pid}
        for process in services.values():  # each counts far less of its own than it maps: the rest is shared
            memory = process.memory_full_info()
            assert memory.uss < 0.75 * memory.rss, (process.cmdline(), memory)
    finally:
        stop_rack(rack)


def test_a_killed_fork_server_is_started_again_with_every_service(tmp_path: Path, docker_engine: str) -> None:
    rack = start_rack(tmp_path / "data", RACK_NAME + "-sup-fork2")
    auth = ("x", rack.password)
    try:
        log = rack.data_dir / "logs" / "rack.log"
        deadline = time.monotonic() + 30
        while "at=ready url=" not in log.read_text():  # the start over (a death during it fails the start)
            assert time.monotonic() < deadline, "the rack never said it was ready"
            time.sleep(0.05)
        before = {name: p.pid for name, p in services_of(rack.process.pid).items()}
        [server] = [
            p
            for p in psutil.Process(rack.process.pid).children()
            if "services.forkserver" in " ".join(p.cmdline())
        ]
        server.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # every service again, each a new process, and the rack answering
            after = {name: p.pid for name, p in services_of(rack.process.pid).items()}
            answered = 0
            with contextlib.suppress(httpx.HTTPError):
                answered = httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=auth, timeout=2).status_code
            if set(after) == EXPECTED and not set(after.values()) & set(before.values()) and answered == 200:
                break
            assert time.monotonic() < deadline, (before, after, answered)
            time.sleep(0.1)
        for pid in before.values():
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        stop_rack(rack)


def test_a_fork_server_that_dies_during_the_start_does_not_fail_it(tmp_path: Path, docker_engine: str) -> None:
    data_dir = tmp_path / "data"
    killed = threading.Event()

    def kill_the_fork_server_once_it_has_forked() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for process in psutil.process_iter(["cmdline"]):
                line = " ".join(process.info["cmdline"] or [])
                with contextlib.suppress(psutil.Error):
                    if "services.forkserver" in line and str(data_dir) in line and process.children():
                        process.kill()
                        killed.set()
                        return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_fork_server_once_it_has_forked, daemon=True)
    killer.start()
    rack = start_rack(data_dir, RACK_NAME + "-sup-fork3")
    try:
        killer.join(5)
        assert killed.is_set()
        log = (data_dir / "logs" / "rack.log").read_text()
        assert "at=retry" in log and "at=failed" not in log  # the kill came during the start, and it went on
        assert set(services_of(rack.process.pid)) == EXPECTED
        response = httpx.get(f"{rack.url}/apps", verify=rack.verify, auth=("x", rack.password), timeout=5)
        assert response.status_code == 200
    finally:
        stop_rack(rack)
