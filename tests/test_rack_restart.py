"""Apps outlive the rack's own restarts: their balancers live in a process of their own, so an app keeps
answering on the same port while `convox rack start` is stopped and started again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import RACK_NAME, ROOT, Cli, remove_labelled_containers, start_rack, stop_balancer, stop_rack
from tests.test_deploy import SAMPLE, deploy, fetch, info
from tests.test_tls_ports import GEN2, get, served_fingerprint, trusting


@dataclass
class Requester:
    """Requests ``address`` over a new connection each time, as fast as it answers, counting the outcomes."""

    address: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                response = httpx.get(f"http://{self.address}/", timeout=5)
                if response.status_code == 200 and response.text == "v1\n":
                    self.ok += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text[:40]!r}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)


def balancer_pids(data: Path) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"balancerd --socket {data / 'run' / 'balancer.sock'}"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def test_an_app_answers_on_the_same_port_through_a_full_rack_restart(busybox_image: str, tmp_path: Path) -> None:
    """And when the balancer process itself is killed, the rack starts it again on the same port; an https
    port keeps its certificate throughout, and a volume its data."""
    name = RACK_NAME + "-restart"
    data = tmp_path / "data"
    env = {"RACK_LOCAL_BALANCER_ORPHAN_SECONDS": "120"}
    first = start_rack(data, name, env=env)
    requester: Requester | None = None
    thread: threading.Thread | None = None
    try:
        user = Cli({**first.env(tmp_path / "cfg"), "PYTHONPATH": str(ROOT)}, tmp_path)  # this checkout's CLI
        source = tmp_path / "web"
        shutil.copytree(SAMPLE, source)
        user("apps", "create", "steady", check=True)
        assert deploy(user, "steady", source).returncode == 0
        secure = tmp_path / "secure"
        secure.mkdir()
        volume = "    volumes:\n      - /data\n"
        (secure / "convox.yml").write_text(GEN2.format(image=busybox_image) + volume)
        user("apps", "create", "secure", check=True)
        assert deploy(user, "secure", secure).returncode == 0
        user("run", "--app", "secure", "web", "echo kept > /data/mark", input="", check=True)
        https = info(user, "secure")["Balancer"]
        certificate = info(user, "secure")["Certificate"]
        pem = trusting(data / "certs" / "secure" / "cert.pem")
        balancer = info(user, "steady")["Balancer"]
        assert fetch(balancer) == "v1\n"
        requester = Requester(balancer)
        thread = threading.Thread(target=requester.run, daemon=True)
        thread.start()
        while requester.ok < 20:
            time.sleep(0.05)
        stop_rack(first)
        during = requester.ok
        second = start_rack(data, name, port=int(first.url.rsplit(":", 1)[1]), env=env)
        try:
            assert requester.ok > during, "the app answered while the rack was down"
            assert info(user, "steady")["Balancer"] == balancer  # the same port, adopted
            assert info(user, "steady")["Status"] == "running"
            assert get(https + "/", pem).text == "secure\n"  # the same listener, its certificate adopted
            assert info(user, "secure")["Certificate"] == certificate
            read = user("run", "--app", "secure", "web", "cat /data/mark", input="")
            assert (read.returncode, read.stdout) == (0, "kept\n"), read.stderr  # the volume kept its data
            adopted = requester.ok
            while requester.ok < adopted + 50:  # and it goes on answering after the adoption
                time.sleep(0.05)
            requester.stopping.set()
            thread.join(10)
            (pid,) = balancer_pids(data)
            os.kill(pid, signal.SIGKILL)
            assert fetch(balancer, within=30) == "v1\n"  # started again by the workers, on the kept port
            assert info(user, "steady")["Balancer"] == balancer
            assert len(balancer_pids(data)) == 1
            assert get(https + "/", pem).text == "secure\n"
            assert served_fingerprint(https.removeprefix("https://")) == certificate
        finally:
            stop_rack(second)
    finally:
        if requester is not None and thread is not None:
            requester.stopping.set()
            thread.join(10)
        stop_rack(first)
        stop_balancer(data)
        remove_labelled_containers(name)
    assert requester is not None
    assert requester.failures == [], f"{len(requester.failures)} of {requester.ok} requests failed"
    assert requester.ok > 100
