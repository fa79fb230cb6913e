"""`convox logs` end to end on a real rack and Docker Engine: every process of an app merged in time order and
followed, history (also of processes that are gone), long lines and raw bytes, platform events, one process,
the rack's own logs and processes, no loss under load, and streams that survive the logs service's kill -9 and
the loss of the Engine's connection.

Containers are started here with ``docker run`` and the rack's labels (they are an app's processes for the
rack, and are removed at the end of the run), with Docker's ``local`` log driver as the rack's own are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, RUN_ID, Cli, RunningRack, remove_labelled_containers, start_rack, stop_rack

LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<service>[a-z0-9-]+):(?P<release>[A-Z0-9.]*)"
    r"(?:/(?P<pid>[0-9a-f]{12}))? (?P<text>.*)$"
)
RELEASE = "RTESTLOGSAA"


def run(rack: RunningRack | str, app: str, service: str, script: str, *, image: str, driver: str = "local",
        release: str = RELEASE, oneoff: bool = False, log_opts: tuple[str, ...] = ()) -> str:  # fmt: skip
    """A process of ``app`` (a container with the rack's labels) running ``sh -c script``; its full id."""
    name = rack if isinstance(rack, str) else rack.name
    labels = [f"convox.rack={name}", f"convox.app={app}", f"convox.type={service}", f"convox.release={release}"]
    if oneoff:
        labels.append("convox.oneoff=true")
    argv = ["docker", "run", "-d", "--init", "--log-driver", driver]
    for option in log_opts:
        argv += ["--log-opt", option]
    for label in labels:
        argv += ["--label", label]
    return subprocess.run([*argv, image, "sh", "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def wait_exited(container: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while docker("inspect", "-f", "{{.State.Running}}", container).strip() == "true":
        assert time.monotonic() < deadline, f"{container[:12]} still runs"
        time.sleep(0.1)


class Follower:
    """`convox logs ...` in the background; its stdout collected line by line."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli.env,
            cwd=cli.cwd,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8").rstrip("\n"))

    def wait_for(self, predicate: Callable[[list[str]], bool], within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not predicate(self.lines):
            if self.proc.poll() is not None:
                self.reader.join(5)
                if predicate(self.lines):
                    return
                stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"convox logs exited {self.proc.returncode}: {stderr}")
            assert time.monotonic() < deadline, f"not seen within {within}s; last lines: {self.lines[-5:]}"
            time.sleep(0.05)

    def texts(self, pid: str) -> list[str]:
        """What the process wrote (not the platform's events about it)."""
        return [
            m["text"]
            for line in self.lines
            if (m := LINE.match(line)) and m["pid"] == pid[:12] and m["service"] != "convox"
        ]

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        stderr = self.proc.stderr.read().decode()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return code, stderr


@pytest.fixture(params=["https"])
def over(request: pytest.FixtureRequest) -> str:
    """Where the CLI reaches the rack: its HTTPS address (a log stream is a websocket) or, where a test is
    parametrized so, its own unix socket (a raw stream, :mod:`shared.rawstream`)."""
    return str(request.param)


@pytest.fixture
def cli(cli: Cli, rack: RunningRack, over: str) -> Cli:
    if over == "unix":
        cli.env["CONVOX_HOST"] = rack.local_url
    return cli


BOTH_WAYS = pytest.mark.parametrize("over", ["https", "unix"], indirect=True)


@pytest.fixture
def follow(cli: Cli) -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        follower = Follower(cli, "logs", *args)
        started.append(follower)
        return follower

    yield start
    for follower in started:
        if follower.proc.stdout is not None and not follower.proc.stdout.closed:
            follower.stop()


@pytest.fixture
def app(cli: Cli, app_name: str) -> Iterator[str]:
    cli("apps", "create", app_name, check=True)
    try:
        yield app_name
    finally:
        cli("apps", "delete", app_name)


def parsed(lines: list[str]) -> list[re.Match[str]]:
    lines = list(lines)  # a follower's reader may be adding to it
    matches = [LINE.match(line) for line in lines]
    bad = [line for line, m in zip(lines, matches, strict=True) if m is None]
    assert not bad, f"lines not in the form TIMESTAMP TYPE:RELEASE/PID LINE: {bad[:3]}"
    return [m for m in matches if m is not None]


def numbers(lines: list[str], pid: str) -> list[int]:
    return [int(m["text"][2:]) for m in parsed(lines) if m["pid"] == pid[:12] and m["text"].startswith("n=")]


def out_of_order(lines: list[str]) -> list[str]:
    """Lines that come after a later one (with the line before them): none when the lines are in time order."""
    found: list[str] = []
    latest = ""
    for before, line in zip(["", *lines], lines, strict=False):
        stamp = line.split(" ", 1)[0]
        if stamp < latest:
            found.append(f"{before[:100]} >> {line[:100]}")
        latest = max(latest, stamp)
    return found


# ---- merged, followed, history ---------------------------------------------------------------------------


def test_every_process_merged_and_followed_with_history_and_events(
    rack: RunningRack, cli: Cli, app: str, busybox_image: str, follow: Callable[..., Follower]
) -> None:
    web = run(rack, app, "web", "echo web-up; while true; do echo web-tick; sleep 0.3; done", image=busybox_image)
    follower = follow("--app", app, "--since", "1m")
    follower.wait_for(lambda lines: "web-tick" in " ".join(lines))
    worker = run(rack, app, "worker", "for i in 1 2 3; do echo worker-$i; done; exit 3", image=busybox_image)
    oneoff = run(rack, app, "web", "echo oneoff-ran", image=busybox_image, oneoff=True)
    follower.wait_for(lambda lines: "worker crashed (exit code 3)" in " ".join(lines))
    follower.wait_for(lambda lines: "oneoff-ran" in " ".join(lines))
    docker("stop", "-t", "2", web)
    follower.wait_for(lambda lines: "web stopped (exit code 143)" in " ".join(lines))
    code, stderr = follower.stop()
    assert (code, stderr) == (130, "")

    lines = follower.lines
    assert not out_of_order(lines)
    events = {(m["service"], m["pid"], m["text"]) for m in parsed(lines) if m["service"] == "convox"}
    assert {
        ("convox", worker[:12], "worker started"),
        ("convox", worker[:12], "worker crashed (exit code 3)"),
        ("convox", oneoff[:12], "web exited (exit code 0)"),
        ("convox", web[:12], "web stopped (exit code 143)"),
    } <= events
    assert follower.texts(worker) == ["worker-1", "worker-2", "worker-3"]
    assert follower.texts(oneoff) == ["oneoff-ran"]
    assert all(m["release"] == RELEASE for m in parsed(lines))
    assert any(m["service"] == "worker" and m["pid"] == worker[:12] for m in parsed(lines))

    docker("rm", "-f", worker, oneoff, web)  # the processes are gone; their lines are not
    history = cli("logs", "--app", app, "--since", "5m", "--no-follow", check=True).stdout.splitlines()
    assert not out_of_order(history)
    worker_history = [m["text"] for m in parsed(history) if m["pid"] == worker[:12]]
    assert [text for text in worker_history if text.startswith("worker-")] == ["worker-1", "worker-2", "worker-3"]
    assert {"worker started", "worker crashed (exit code 3)"} <= set(worker_history)
    assert set(lines) <= set(history)
    only = cli("logs", "--app", app, "--since", "5m", "--no-follow", "--service", "worker", check=True).stdout
    assert {m["pid"] for m in parsed(only.splitlines())} == {worker[:12]}
    assert {m["text"] for m in parsed(only.splitlines()) if m["service"] == "worker"} == {
        "worker-1",
        "worker-2",
        "worker-3",
    }
    matching = cli("logs", "--app", app, "--since", "5m", "--no-follow", "--filter", "worker-2", check=True).stdout
    assert [m["text"] for m in parsed(matching.splitlines())] == ["worker-2"]


@BOTH_WAYS
def test_one_process_and_a_bad_pid_or_app(
    rack: RunningRack, cli: Cli, app: str, busybox_image: str, app_name: str
) -> None:
    first = run(rack, app, "web", "echo first-1; echo first-2", image=busybox_image)
    second = run(rack, app, "web", "echo second-1", image=busybox_image)
    wait_exited(first)
    wait_exited(second)
    deadline = time.monotonic() + 20
    while True:
        out = cli("logs", "--app", app, "--pid", first[:12], "--no-follow", "--since", "5m")
        texts = [m["text"] for m in parsed(out.stdout.splitlines()) if m["service"] != "convox"]
        if texts == ["first-1", "first-2"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (out.returncode, texts) == (0, ["first-1", "first-2"])
    assert {m["pid"] for m in parsed(out.stdout.splitlines())} == {first[:12]}
    docker("rm", "-f", first)
    gone = cli("logs", "--app", app, "--pid", first, "--no-follow", "--since", "5m")  # a full id works too
    assert gone.returncode == 0 and "first-2" in gone.stdout

    started = time.monotonic()
    unknown = cli("logs", "--app", app, "--pid", "0123456789ab")
    assert (unknown.returncode, unknown.stderr) == (1, "ERROR: no such process: 0123456789ab\n")
    assert time.monotonic() - started < 10
    other = cli("logs", "--app", f"{app_name}x", "--pid", second[:12])
    assert other.returncode == 1 and other.stderr.startswith("ERROR: no such app")
    missing = cli("logs", "--app", "nosuchapp")
    assert (missing.returncode, missing.stderr) == (1, "ERROR: no such app: nosuchapp\n")


def test_long_lines_arrive_whole_and_bytes_that_are_not_utf8_are_escaped(
    rack: RunningRack, cli: Cli, app: str, busybox_image: str
) -> None:
    script = (
        "head -c 1048576 /dev/zero | tr '\\0' a; echo; head -c 40000 /dev/zero | tr '\\0' b; echo; "
        "printf 'raw \\377\\376 end\\n'; printf 'no newline at exit'"
    )
    local = run(rack, app, "web", script, image=busybox_image)
    jsonfile = run(rack, app, "worker", "head -c 100000 /dev/zero | tr '\\0' c; echo; echo after", image=busybox_image,
                   driver="json-file")  # fmt: skip
    wait_exited(local)
    wait_exited(jsonfile)
    deadline = time.monotonic() + 20
    while True:
        out = cli("logs", "--app", app, "--no-follow", "--since", "5m", "--service", "web", check=True)
        texts = [m["text"] for m in parsed(out.stdout.splitlines()) if m["pid"] == local[:12] and m["service"] == "web"]
        if len(texts) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert texts == ["a" * 1048576, "b" * 40000, "raw \\xff\\xfe end", "no newline at exit"]
    out = cli("logs", "--app", app, "--no-follow", "--since", "5m", "--pid", jsonfile[:12], check=True)
    assert [m["text"] for m in parsed(out.stdout.splitlines()) if m["service"] == "worker"] == ["c" * 100000, "after"]


def test_a_process_whose_log_file_rotates_is_still_followed(
    rack: RunningRack, app: str, busybox_image: str, follow: Callable[..., Follower]
) -> None:
    """Docker's follow of a ``local`` log stops for good when the file rotates (its own `docker logs -f` does
    too): the rack's reader sees the log went on without it and follows again from where it was."""
    follower = follow("--app", app)
    script = "sleep 2; i=0; while [ $i -lt 20000 ]; do echo n=$i; i=$((i+1)); done; sleep 1; echo after-rotation; "
    script += "sleep 600"
    container = run(rack, app, "web", script, image=busybox_image, log_opts=("max-size=100k", "max-file=3"))
    try:
        follower.wait_for(lambda lines: any(line.endswith(" after-rotation") for line in lines), within=60)
        seen = numbers(follower.lines, container)
        assert seen == sorted(set(seen)), "a line twice or out of order after following again"
        assert seen[0] == 0
    finally:
        docker("rm", "-f", container)


# ---- platform events of deploys --------------------------------------------------------------------------


def test_platform_events_build_release_scale_and_a_failed_health_check(
    cli: Cli, app: str, busybox_image: str, tmp_path: Path
) -> None:
    source = tmp_path / "web"
    shutil.copytree(ROOT / "tests" / "apps" / "web", source)
    deployed = cli("deploy", str(source), "--app", app, timeout=300)
    history = cli("logs", "--app", app, "--no-follow", "--since", "10m", "--service", "convox").stdout
    assert deployed.returncode == 0, f"{deployed.stderr[-2000:]}\n{history[-2000:]}"
    assert cli("scale", "web", "--count", "2", "--app", app).returncode == 0
    manifest = source / "convox.yml"
    manifest.write_text(manifest.read_text().replace("command: httpd -f -p 3000 -h /www", "command: sleep 600", 1))
    assert cli("deploy", str(source), "--app", app, timeout=300).returncode != 0
    release = cli("apps", "info", app, check=True).stdout.split("Release")[1].split()[0]
    deadline = time.monotonic() + 20
    while True:
        out = cli("logs", "--app", app, "--no-follow", "--since", "10m", check=True).stdout.splitlines()
        events = [(m["release"], m["text"]) for m in parsed(out) if m["service"] == "convox"]
        texts = " | ".join(text for _, text in events)
        if "release failed to roll out" in texts or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    builds = [m for m in parsed(out) if m["service"] == "build"]
    assert builds and re.fullmatch(r"B[A-Z]{10}", builds[0]["release"])
    assert any(m["text"].startswith("Step 1/") for m in builds)
    assert (release, "release promoted") in events
    assert "web started" in texts and "backend started" in texts
    assert (release, "web scaled: count 2") in events
    assert "web failed its health check (GET /)" in texts
    assert re.search(r"release failed to roll out: web failed its health check \(GET /\)", texts)
    assert not out_of_order(out)


# ---- the rack itself -------------------------------------------------------------------------------------


@BOTH_WAYS
def test_the_racks_own_logs_and_processes(
    rack: RunningRack, cli: Cli, follow: Callable[..., Follower], over: str
) -> None:
    out = cli("rack", "logs", "--no-follow", "--since", "1h", check=True).stdout.splitlines()
    assert any(re.match(r"^\S+Z gateway: ns=gateway at=request state=\w+ status=\d+ method=", line) for line in out)
    assert any(re.match(r"^\S+Z supervisor: ns=supervisor at=start service=logs pid=\d+", line) for line in out)
    assert not out_of_order(out)
    only = cli("logs", "--app", "convox", "--no-follow", "--since", "1h", "--service", "gateway", check=True)
    assert only.stdout and all(re.match(r"^\S+Z gateway: ", line) for line in only.stdout.splitlines())

    follower = Follower(cli, "rack", "logs", "--service", "gateway", "--since", "1s")
    try:
        cli("api", "get", "/apps/convox-follow-check", check=False)
        follower.wait_for(lambda lines: any('path="/apps/convox-follow-check"' in line for line in lines))
    finally:
        assert follower.stop()[0] == 130
    if over == "unix":  # the follow was a raw stream, and its end was seen when the CLI went
        deadline = time.monotonic() + 15
        while True:
            ends = cli("rack", "logs", "--no-follow", "--since", "1m", "--service", "logs", check=True).stdout
            if any("at=stream.end outcome=disconnect raw=true" in line for line in ends.splitlines()):
                break
            assert time.monotonic() < deadline, ends[-2000:]
            time.sleep(0.2)

    ps = cli("rack", "ps", check=True).stdout.splitlines()
    assert ps[0].split() == ["ID", "NAME", "CPU", "MEM", "STARTED", "COMMAND"]
    rows = {row.split()[1]: row.split() for row in ps[1:]}
    assert set(rows) == {"supervisor", "apps", "processes", "logs", "builds", "provisioner", "gateway"}
    listed = json.loads((rack.data_dir / "run" / "processes.json").read_text())
    assert {entry["name"]: str(entry["pid"]) for entry in listed} == {name: row[0] for name, row in rows.items()}
    for row in rows.values():
        assert re.fullmatch(r"\d+\.\d\d%", row[2]) and re.fullmatch(r"\d+\.\d\d%", row[3])
        assert float(row[3].rstrip("%")) > 0


# ---- no loss -----------------------------------------------------------------------------------------------

PER_PROCESS = 10_000
WRITER = (
    f"i=0; while [ $i -lt {PER_PROCESS} ]; do j=0; "
    "while [ $j -lt 100 ]; do echo n=$i; i=$((i+1)); j=$((j+1)); done; usleep 100000; done"
)  # 100 lines every 0.1 s: 1,000 lines a second per process, for 10 s


def test_ten_processes_at_ten_thousand_lines_a_second_lose_nothing(
    rack: RunningRack, cli: Cli, app: str, busybox_image: str, follow: Callable[..., Follower]
) -> None:
    follower = follow("--app", app, "--since", "1s")
    time.sleep(1.5)
    writers = [run(rack, app, f"p{i}", WRITER, image=busybox_image) for i in range(10)]
    started = time.monotonic()
    follower.wait_for(lambda lines: len(lines) >= 10 * PER_PROCESS + 20, within=90)
    elapsed = time.monotonic() - started
    for writer in writers:
        wait_exited(writer)
    follower.stop()
    for writer in writers:
        assert numbers(follower.lines, writer) == list(range(PER_PROCESS)), f"{writer[:12]} lost or reordered lines"
    assert not out_of_order(follower.lines)
    history = cli("logs", "--app", app, "--since", "5m", "--no-follow", check=True, timeout=180).stdout.splitlines()
    for writer in writers:
        assert numbers(history, writer) == list(range(PER_PROCESS))
    assert not out_of_order(history)
    assert elapsed < 60


def test_a_follower_that_stops_reading_catches_up_without_a_gap(
    rack: RunningRack, app: str, busybox_image: str, follow: Callable[..., Follower]
) -> None:
    follower = follow("--app", app, "--since", "1s")
    time.sleep(1.5)
    follower.proc.send_signal(signal.SIGSTOP)  # a client that does not read: its queue overflows
    try:
        burst = run(
            rack, app, "burst", "i=0; while [ $i -lt 60000 ]; do echo n=$i; i=$((i+1)); done", image=busybox_image
        )
        wait_exited(burst)
        time.sleep(2)
    finally:
        follower.proc.send_signal(signal.SIGCONT)
    follower.wait_for(lambda lines: len(numbers(lines, burst)) >= 60000, within=60)
    assert numbers(follower.lines, burst) == list(range(60000))


# ---- faults ------------------------------------------------------------------------------------------------


def logs_pid(data_dir: Path) -> int:
    entries = json.loads((data_dir / "run" / "processes.json").read_text())
    return int(next(entry["pid"] for entry in entries if entry["name"] == "logs"))


def workers_started(cli: Cli) -> int:
    """How often the logs service has started the rack's workers (``provider.workers()``) in the last hour."""
    out = cli("rack", "logs", "--no-follow", "--since", "1h", "--service", "logs", check=True).stdout
    return len(re.findall(r"^\S+Z logs: ns=workers at=workers\.started ", out, re.MULTILINE))


@BOTH_WAYS
def test_a_stream_survives_a_kill_of_the_logs_service_without_loss_or_duplicates(
    rack: RunningRack, cli: Cli, app: str, busybox_image: str, follow: Callable[..., Follower]
) -> None:
    follower = follow("--app", app, "--since", "1s")
    time.sleep(1.5)
    writer = run(rack, app, "web", "i=0; while [ $i -lt 3000 ]; do echo n=$i; i=$((i+1)); usleep 4000; done",
                 image=busybox_image)  # fmt: skip
    follower.wait_for(lambda lines: len(numbers(lines, writer)) > 300)
    started = workers_started(cli)
    before = logs_pid(rack.data_dir)
    os.kill(before, signal.SIGKILL)
    follower.wait_for(lambda lines: len(numbers(lines, writer)) >= 3000, within=60)
    assert logs_pid(rack.data_dir) != before  # it was restarted, and the stream resumed
    # with it the rack's background work (log collection one of its loops): started again, once
    deadline = time.monotonic() + 30
    while workers_started(cli) == started:
        assert time.monotonic() < deadline, "the restarted logs service did not start the workers"
        time.sleep(0.2)
    assert workers_started(cli) == started + 1
    assert follower.proc.poll() is None
    assert numbers(follower.lines, writer) == list(range(3000))
    history = cli("logs", "--app", app, "--since", "5m", "--no-follow", check=True).stdout.splitlines()
    assert numbers(history, writer) == list(range(3000))
    code, stderr = follower.stop()
    assert code == 130  # Ctrl-C
    assert "reconnecting..." in stderr  # said when the stream dropped, not after 120 s
    assert re.search(r"resumed the log stream, caught up \d+ lines?", stderr), stderr


def test_a_quiet_stream_stays_open(
    rack: RunningRack, app: str, busybox_image: str, follow: Callable[..., Follower]
) -> None:
    follower = follow("--app", app, "--since", "1s")
    time.sleep(25)  # longer than every ping interval on the way (20 s)
    assert follower.proc.poll() is None
    late = run(rack, app, "web", "echo still-here", image=busybox_image)
    follower.wait_for(lambda lines: "still-here" in follower.texts(late), within=20)


class DockerProxy:
    """A unix socket in front of the Docker Engine's: stopping it drops every connection and refuses new ones,
    which is what the rack sees of a restarting Engine (the containers go on writing meanwhile)."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.AbstractServer | None = None
        self.transports: set[asyncio.BaseTransport] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_unix_server(self._handle, str(self.path))

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for transport in self.transports:
            transport.abort()  # type: ignore[attr-defined]
        self.transports.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_streams_survive_losing_the_docker_engine_without_loss_or_duplicates(
    tmp_path: Path, docker_engine: str, busybox_image: str
) -> None:
    """The Engine's connection drops for 3 s (what a restart of dockerd looks like to the rack; restarting the
    shared Engine itself would disturb every other test) while a process keeps writing."""
    proxy = DockerProxy(tmp_path / "docker.sock")
    proxy.start()
    name = f"test-{RUN_ID}-proxy"
    running = start_rack(tmp_path / "data", name, env={"RACK_LOCAL_DOCKER_URL": f"unix://{proxy.path}"})
    follower: Follower | None = None
    try:
        config = tmp_path / "config"
        env = running.env(config)
        env["PYTHONPATH"] = str(ROOT)
        cli = Cli(env, tmp_path)
        cli("apps", "create", "survivor", check=True)
        follower = Follower(cli, "logs", "--app", "survivor", "--since", "1s")
        time.sleep(1.5)
        writer = run(name, "survivor", "web", "i=0; while [ $i -lt 2000 ]; do echo n=$i; i=$((i+1)); usleep 4000; done",
                     image=busybox_image)  # fmt: skip
        follower.wait_for(lambda lines: len(numbers(lines, writer)) > 200)
        proxy.stop()
        time.sleep(3)
        proxy.start()
        follower.wait_for(lambda lines: len(numbers(lines, writer)) >= 2000, within=60)
        assert numbers(follower.lines, writer) == list(range(2000))
        assert follower.stop()[0] == 130
        history = cli("logs", "--app", "survivor", "--since", "5m", "--no-follow", check=True).stdout.splitlines()
        assert numbers(history, writer) == list(range(2000))
    finally:
        if follower is not None and follower.proc.stdout is not None and not follower.proc.stdout.closed:
            follower.stop()
        stop_rack(running)
        remove_labelled_containers(name)
        subprocess.run(["docker", "network", "rm", f"convox-{name}"], capture_output=True, check=False)
        proxy.close()
