"""Faults: ``kill -9`` of each of the rack's services (apps, builds, logs, processes, provisioner, gateway) while
a roll-out (`convox env set --promote`), an exec session (`convox exec ... cat`), a log follow (`convox logs`) and
a build (`convox build`) run. After each kill the rack answers again within a bound, and nothing is lost: the
roll-out fails cleanly when the workers' owner (the logs service, where it runs) dies and finishes otherwise
(what the CLI said is what the app runs, nothing half-done is left), the log follow sees every numbered line
exactly once, the build is marked failed when its service dies (complete otherwise), an exec session through
a service that did not die goes on, and a new build and deploy work.

One rack of its own (it is killed); the measured recovery times are printed (``pytest -s``) for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.conftest import (
    RACK_NAME,
    ROOT,
    Cli,
    RunningRack,
    on_uvicorn,
    remove_labelled_containers,
    start_rack,
    stop_balancer,
    stop_rack,
)
from tests.test_deploy import SAMPLE, fetch
from tests.test_logs import Follower, numbers

KILLED = ("apps", "builds", "logs", "processes", "provisioner", "gateway")
RECOVER_WITHIN = 45.0
"""Generous: the machine running the suite is loaded. The promise (on a quiet machine) is 2 s; the measured
times are printed."""
SETTLE_WITHIN = 90.0
"""For a build, a roll-out or a session to end after a kill."""
WORKERS_OWNER = "logs"
"""The service that runs ``provider.workers()``: the roll-outs run there, so its kill interrupts one."""
EXEC_PATH = ("processes", "gateway")
"""The services an exec session's bytes go through: their kill ends the session (with an error)."""

MANIFEST = """services:
  web:
    build: .
    command: sh -c 'sleep 5; exec httpd -f -p 3000 -h /www'
    port: 3000
    health:
      path: /
      grace: 8
      timeout: 3
    scale:
      count: 1
      memory: 64
"""
SLOW_DOCKERFILE = """FROM rack-test/busybox:1
COPY www /www
RUN chmod +x /www/cgi-bin/env
COPY stamp /stamp
RUN echo chaos-build-running && sleep 4 && echo chaos-build-done
"""
WRITER = "i=0; while :; do echo n=$i; i=$((i+1)); usleep 20000; done"


class Background:
    """`convox ARGS` running in the background, its stdout and stderr collected line by line."""

    def __init__(self, cli: Cli, *args: str, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli.env,
            cwd=cli.cwd,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            into.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_out(self, predicate: Callable[[list[str]], bool], within: float) -> None:
        deadline = time.monotonic() + within
        while not predicate(self.out):
            assert self.proc.poll() is None or predicate(self.out), (
                f"exited {self.proc.returncode} first: {self.err[-5:]}"
            )
            assert time.monotonic() < deadline, f"not seen within {within}s: {self.out[-5:]} {self.err[-5:]}"
            time.sleep(0.05)

    def finish(self, within: float = SETTLE_WITHIN) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        code = self.proc.wait(within)
        for reader in self.readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code


def service_pids(rack: RunningRack) -> dict[str, int]:
    """What the supervisor records in ``run/processes.json``: each service's pid."""
    try:
        entries = json.loads((rack.data_dir / "run" / "processes.json").read_text())
    except (OSError, ValueError):  # being replaced
        return {}
    return {entry["name"]: int(entry["pid"]) for entry in entries}


def answers(http: httpx.Client, app: str) -> bool:
    """Whether the rack answers through each of its services (the gateway in front of them all)."""
    paths = [
        f"/apps/{app}",  # apps
        f"/apps/{app}/builds",  # builds
        f"/apps/{app}/processes",  # processes
        "/services",  # provisioner
        f"/apps/{app}/logs?follow=false&since=1m",  # logs
    ]
    try:
        return all(http.get(path).status_code == 200 for path in paths)
    except httpx.HTTPError:
        return False


def eventually(check: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``check()`` holds."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < within, f"{what}: not within {within}s"
        time.sleep(0.02)
    return time.monotonic() - began


def summary(found: list[int]) -> str:
    """How a list of line numbers differs from 0, 1, 2, ...: its length, its gaps and its duplicates."""
    gaps = sorted(set(range(max(found, default=-1) + 1)) - set(found))
    doubled = sorted({n for n in found if found.count(n) > 1})
    return f"{len(found)} numbers, up to {max(found, default=-1)}, missing {gaps[:20]}, doubled {doubled[:20]}"


def running_in(container: str) -> str:
    found = subprocess.run(["docker", "top", container, "-o", "pid,args"], capture_output=True, text=True, check=True)
    return found.stdout


def containers_of(rack: RunningRack, app: str, release: str = "") -> list[str]:
    filters = ["--filter", f"label=convox.rack={rack.name}", "--filter", f"label=convox.app={app}"]
    if release:
        filters += ["--filter", f"label=convox.release={release}"]
    return subprocess.run(["docker", "ps", "-q", *filters], capture_output=True, text=True, check=True).stdout.split()


@dataclass
class Scene:
    """The rack under fire, its user, an app deployed on it and the one-off writing numbered lines to a follow."""

    rack: RunningRack
    user: Cli
    http: httpx.Client
    app: str
    slow: Path
    writer: str
    follower: Follower

    def numbers(self) -> int:
        return len(numbers(self.follower.lines, self.writer))

    def written_lines(self) -> list[str]:
        """The writer's lines the follow saw."""
        return [line for line in list(self.follower.lines) if f"/{self.writer[:12]} n=" in line]

    def ready_seconds(self, service: str) -> str:
        """The supervisor's measure of its last restart of ``service``: from its death to its answer."""
        found = re.findall(
            rf"at=ready service={service} pid=\d+ seconds=([\d.]+)",
            (self.rack.data_dir / "logs" / "rack.log").read_text(),
        )
        return found[-1] if found else "?"


def kill_mid_everything(scene: Scene, service: str) -> str:
    """Start an exec session, a roll-out and a build, ``kill -9`` the service while all of them run with the
    follow, check what each became; returns the line of the report."""
    rack, user, http, app, writer = scene.rack, scene.user, scene.http, scene.app, scene.writer
    # an exec session
    session = Background(user, "exec", "--app", app, writer, "cat", stdin=True)
    session.send("before")
    session.wait_out(lambda out: "before" in out, within=60)
    # a roll-out, its new process started and not healthy yet (it sleeps before it serves)
    before = http.get(f"/apps/{app}").json()
    deploy = Background(user, "env", "set", f"CHAOS={service}", "--promote", "--app", app)
    deploy.wait_out(lambda out: any(line.startswith("Release: ") for line in out), within=60)
    release = next(line for line in deploy.out if line.startswith("Release: ")).split()[1]
    eventually(lambda: bool(containers_of(rack, app, release)), 60, "the roll-out's new process")
    # a build, in its RUN step
    (scene.slow / "stamp").write_text(secrets.token_hex(8))  # never from the cache
    build = Background(user, "build", str(scene.slow), "--app", app)
    build.wait_out(lambda out: "chaos-build-running" in out, within=120)
    assert http.get(f"/apps/{app}").json()["status"] == "updating"  # the kill comes in the midst of both
    assert http.get(f"/apps/{app}/builds").json()[0]["status"] == "running"
    seen = scene.numbers()

    old = service_pids(rack)[service]
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    recovery = eventually(
        lambda: service_pids(rack).get(service, old) != old and answers(http, app),
        RECOVER_WITHIN,
        f"the rack answering again after the kill of {service}",
    )
    answering = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    eventually(  # a line written once the rack answered again: the follow went on (or resumed)
        lambda: scene.written_lines()[-1] > answering, RECOVER_WITHIN, "the log follow going on"
    )
    streaming = time.monotonic() - killed
    assert scene.numbers() > seen

    # the exec session: on through a service that did not die, ended with an error when its own did
    if service in EXEC_PATH:
        code = session.finish()
        assert code != 0 and any(line.startswith("ERROR: ") for line in session.err), (code, session.err)
    else:
        session.send("after")
        session.wait_out(lambda out: "after" in out, within=30)
        assert session.finish() == 0, session.err
    eventually(lambda: " cat" not in running_in(writer), 30, "the session's process gone from the container")
    # the build: failed when the builds service died, complete otherwise; never left running
    built = build.finish()
    latest = http.get(f"/apps/{app}/builds").json()[0]
    if service == "builds":
        assert built != 0 and latest["status"] == "failed", (built, latest, build.err)
    else:
        assert built == 0 and latest["status"] == "complete", (built, latest, build.err)
    # the roll-out: failed cleanly (interrupted) when the workers' owner died, finished otherwise (the CLI's
    # wait rides out the restart of the service it asks); the CLI said which
    promoted = deploy.finish()
    after = http.get(f"/apps/{app}").json()
    assert after["status"] == "running", after
    if service != WORKERS_OWNER:
        assert promoted == 0 and after["release"] == release, (after, deploy.err)
    else:
        assert promoted != 0, (after, deploy.out)
        assert any(f"release {release} failed to roll out" in line for line in deploy.err), deploy.err
        assert after["release"] == before["release"] and after.get("failed_release") == release, after
        assert "interrupted by a restart" in after.get("failure", ""), after
    serving = after["release"]
    eventually(  # nothing half-done: the serving release's process only (and the one-off writer)
        lambda: set(containers_of(rack, app)) == {writer, *containers_of(rack, app, serving)},
        30,
        "only the serving release's processes",
    )
    [web] = http.get(f"/apps/{app}/formation").json()
    assert web["running"] == 1, web
    assert fetch(web["balancer"]) == "v1\n"
    return (
        f"kill -9 {service:<11} answering again in {recovery:5.2f}s (supervisor: READY {scene.ready_seconds(service)}s"
        f" after the death), follow on {streaming:.2f}s after the kill; build {latest['status']}, roll-out"
        f" {'promoted' if promoted == 0 else 'failed cleanly'}, exec {'ended' if service in EXEC_PATH else 'went on'}"
    )


def test_kill_9_of_each_service_mid_roll_out_exec_follow_and_build_loses_nothing(
    tmp_path: Path, busybox_image: str
) -> None:
    name = RACK_NAME + "-chaos"
    rack = start_rack(tmp_path / "data", name)
    report: list[str] = []
    closing = contextlib.ExitStack()
    try:
        env = rack.env(tmp_path / "config")
        env["PYTHONPATH"] = str(ROOT)
        (tmp_path / "work").mkdir()
        user = Cli(env, tmp_path / "work")
        app = f"chaos-{secrets.token_hex(3)}"
        source, slow = tmp_path / "web", tmp_path / "slow"
        shutil.copytree(SAMPLE, source)
        (source / "convox.yml").write_text(MANIFEST)
        shutil.copytree(source, slow)
        (slow / "Dockerfile").write_text(SLOW_DOCKERFILE)
        user("apps", "create", app, check=True)
        user("deploy", str(source), "--app", app, check=True, timeout=300)
        http = rack.client(timeout=10)
        closing.callback(http.close)
        writer = user("run", "--app", app, "--detach", "web", WRITER, check=True).stdout.strip()
        follower = Follower(user, "logs", "--app", app, "--since", "1m")
        scene = Scene(rack, user, http, app, slow, writer, follower)
        eventually(lambda: scene.numbers() > 20, 60, "the follow")
        for service in KILLED:
            report.append(kill_mid_everything(scene, service))

        # nothing lost or doubled in the follow, which went on through every kill; a build and a deploy work
        user("ps", "stop", writer, "--app", app, check=True)

        def written() -> list[int]:
            return numbers(http.get(f"/apps/{app}/logs?follow=false&since=10m").text.splitlines(), writer)

        deadline = time.monotonic() + 60
        while (seen := numbers(follower.lines, writer)) != (kept := written()) and time.monotonic() < deadline:
            time.sleep(0.2)
        count = len(seen)
        doubled = {n for n in seen if seen.count(n) > 1}
        around = [line for line in follower.lines if any(f" n={n}" in line for n in doubled)]
        assert seen == list(range(count)), f"{summary(seen)}: {around[:8]}"
        assert kept == seen, f"the history: {summary(kept)}; the follow: {summary(seen)}"
        assert follower.proc.poll() is None
        follower.stop()
        user("deploy", str(source), "--app", app, check=True, timeout=300)
        report.append(f"log follow: {count} numbered lines, each seen exactly once, in order, as in the history")
    finally:
        print("\n" + "\n".join(report))
        closing.close()
        stop_rack(rack)
        stop_balancer(rack.data_dir)
        remove_labelled_containers(name)


async def test_a_roll_out_is_waited_for_through_a_rack_that_does_not_answer_for_a_moment() -> None:
    """The CLI's wait: a 503 (the apps service restarting) is asked again; what it says at the end is the app's."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from cli.client import Client
    from cli.config import Rack
    from cli.rollout import wait_for_rollout

    APP = {"name": "web", "balancer": "", "failed_release": "", "failure": ""}  # an App as the rack answers it
    answers = [
        JSONResponse({"error": "apps service unavailable"}, 503),
        JSONResponse({"error": "apps service unavailable"}, 503),
        JSONResponse({**APP, "status": "updating", "release": "ROLD"}),
        JSONResponse({**APP, "status": "running", "release": "RNEW"}),
    ]

    async def app_get(request: Request) -> JSONResponse:
        return answers.pop(0)

    async with on_uvicorn(Starlette(routes=[Route("/apps/web", app_get)])) as port:
        with Client(Rack(f"http://127.0.0.1:{port}", "password")) as client:
            await asyncio.to_thread(wait_for_rollout, client, "web", "RNEW")
    assert answers == []
