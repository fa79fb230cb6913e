"""Fixtures that start real things and clean up after themselves.

Every container a test run starts carries the label ``convox.rack=<this run's rack name>`` and is removed
when the run ends. Docker tests fail (never skip) when no engine answers: `make test` starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

if TYPE_CHECKING:
    from shared.config import RackSettings
    from shared.provider import Provider

# A rack's balancer process outlives the rack (apps keep answering through its restarts); the ones tests
# start go soon after their rack (the default is a quarter of an hour).
os.environ.setdefault("RACK_LOCAL_BALANCER_ORPHAN_SECONDS", "30")
RUN_ID = secrets.token_hex(4)
RACK_NAME = f"test-{RUN_ID}"
SESSION_RACK = f"{RACK_NAME}-session"
"""The rack the session's CLI tests share. Not RACK_NAME, which the tests' in-process providers use on data
dirs of their own: a rack's owner takes every one-off labelled with its name as its own, and ends those
whose runner is not alive under its data dir (one rack name per engine is what a real rack assumes)."""
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def remove_labelled_containers(rack: str) -> None:
    docker = shutil.which("docker")
    if docker is None:
        return
    ids = subprocess.run(
        [docker, "ps", "-aq", "--filter", f"label=convox.rack={rack}"], capture_output=True, text=True, check=False
    ).stdout.split()
    if ids:
        subprocess.run([docker, "rm", "-f", "-v", *ids], capture_output=True, check=False)
    volumes = subprocess.run(
        [docker, "volume", "ls", "-q", "--filter", f"label=convox.rack={rack}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if volumes:
        subprocess.run([docker, "volume", "rm", "-f", *volumes], capture_output=True, check=False)
    subprocess.run([docker, "network", "rm", f"convox-{rack}"], capture_output=True, check=False)


def remove_this_runs_leftovers() -> None:
    """What any rack of this test run (``test-RUN``, ``test-RUN-...``) left on the Engine, each rack's as
    :func:`remove_labelled_containers` removes it: the racks are found by their containers' labels and by their
    networks (each rack makes one; the Engine has address pools for about 30, shared by every run)."""
    docker = shutil.which("docker")
    if docker is None:
        return
    labelled = subprocess.run(
        [docker, "ps", "-a", "--format", '{{.Label "convox.rack"}}'], capture_output=True, text=True, check=False
    ).stdout.split()
    networks = subprocess.run(
        [docker, "network", "ls", "--format", "{{.Name}}", "--filter", f"name=convox-{RACK_NAME}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    racks = {*labelled, *(network.removeprefix("convox-") for network in networks)}
    for rack in sorted(r for r in racks if r == RACK_NAME or r.startswith(f"{RACK_NAME}-")):
        remove_labelled_containers(rack)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """The Docker Engine's socket; the run fails here when no engine answers. At the end of the run, what its
    racks left on the Engine is removed."""
    result = (
        subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, check=False
        )
        if shutil.which("docker")
        else None
    )
    if result is None or result.returncode != 0:
        pytest.fail("no Docker Engine answers: run `make docker` (or `make test`, which starts one)")
    yield result.stdout.strip()
    remove_this_runs_leftovers()


@dataclass
class RunningRack:
    url: str
    host: str
    password: str
    data_dir: Path
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    cert: Path | None = None
    """The rack's TLS certificate (``None`` for an ``--insecure-http`` rack)."""

    @functools.cached_property
    def ssl(self) -> SSLContext | None:
        """A client context trusting this rack's certificate: ``verify=rack.ssl`` for httpx, ``ssl=rack.ssl`` for
        websockets (``None`` for a plain HTTP rack)."""
        if self.cert is None:
            return None
        from shared.tls import pinned_context

        return pinned_context(self.cert)

    @property
    def verify(self) -> SSLContext | bool:
        """``verify=`` for httpx: the rack's certificate, or ``True`` for a plain HTTP rack."""
        return self.ssl or True

    @property
    def local_url(self) -> str:
        """The rack's own unix socket, as the CLI on this machine logs in to it (streams handed to the
        services, never relayed)."""
        return f"unix://{self.data_dir / 'rack.sock'}"

    @property
    def ws_url(self) -> str:
        """The rack's URL as a websocket base (``wss://...`` or ``ws://...``)."""
        return "ws" + self.url.removeprefix("http")

    def client(self, **kwargs: object) -> httpx.Client:
        """An httpx client for this rack: its base URL, its certificate, the rack password."""
        return httpx.Client(base_url=self.url, verify=self.verify, auth=("convox", self.password), **kwargs)  # type: ignore[arg-type]

    def env(self, config_dir: Path) -> dict[str, str]:
        """The environment of a `convox` that talks to this rack: CONVOX_HOST, CONVOX_PASSWORD and CONVOX_CERT
        (the rack's certificate, trusted as a pin would be)."""
        env = dict(os.environ)
        env.update(CONVOX_HOST=self.url, CONVOX_PASSWORD=self.password, CONVOX_CONFIG=str(config_dir))
        env.pop("CONVOX_CERT", None)
        if self.cert is not None:
            env["CONVOX_CERT"] = str(self.cert)
        return env


def start_rack(
    data_dir: Path,
    name: str,
    password: str | None = "test-password-" + RUN_ID,
    port: int | None = None,
    env: dict[str, str] | None = None,
    insecure_http: bool = False,
    args: tuple[str, ...] = (),
    unset: tuple[str, ...] = (),
) -> RunningRack:
    """``env`` adds to the rack's environment (settings such as ``RACK_BUILDS_MAX_SOURCE_SIZE``), ``unset``
    removes from it (``AWS_ACCESS_KEY_ID``...), ``args`` adds to `rack start`'s (``--provider aws --stack
    NAME``). The rack serves HTTPS with its own certificate (``rack.cert``) unless ``insecure_http``."""
    port = port or free_port()
    extra = env or {}
    env = dict(os.environ, RACK_NAME=name, PYTHONUNBUFFERED="1", **extra)
    for variable in unset:
        env.pop(variable, None)
    env.pop("CONVOX_PASSWORD", None)
    if password:
        env["CONVOX_PASSWORD"] = password
    log = data_dir.parent / f"{data_dir.name}.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "rack", "start", "--port", str(port), "--data-dir", str(data_dir)]
            + (["--insecure-http"] if insecure_http else [])
            + list(args),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    url = f"{'http' if insecure_http else 'https'}://127.0.0.1:{port}"
    cert = None if insecure_http else data_dir / "tls" / "cert.pem"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rack exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if cert is None or cert.exists():
                from shared.tls import pinned_context

                verify = pinned_context(cert) if cert else True
                if httpx.get(f"{url}/check", timeout=1, verify=verify).status_code == 200:
                    break
        except (httpx.TransportError, ssl.SSLError):
            pass
        time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"rack did not answer within 180s: {log.read_text()[-3000:]}")
    stored = (data_dir / "password").read_text().strip()
    return RunningRack(url, f"127.0.0.1:{port}", stored, data_dir, name, process, log, cert)


def stop_rack(rack: RunningRack) -> None:
    if rack.process.poll() is None:
        rack.process.send_signal(signal.SIGTERM)
        try:
            rack.process.wait(30)
        except subprocess.TimeoutExpired:
            rack.process.kill()
            rack.process.wait()


def stop_balancer(data_dir: Path) -> None:
    """Stop the balancer process of the rack at ``data_dir`` (it outlives the rack): it exits within a second
    of its control socket going."""
    with contextlib.suppress(FileNotFoundError):
        (data_dir / "run" / "balancer.sock").unlink()


@pytest.fixture(scope="session")
def rack(tmp_path_factory: pytest.TempPathFactory, docker_engine: str) -> Iterator[RunningRack]:
    """A rack started as a user starts it (`convox rack start`), shared by the session's tests."""
    data_dir = tmp_path_factory.mktemp("rack") / "data"
    running = start_rack(data_dir, SESSION_RACK)
    try:
        yield running
    finally:
        stop_rack(running)
        stop_balancer(data_dir)
        remove_labelled_containers(SESSION_RACK)


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path

    def __call__(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"convox {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


@pytest.fixture
def cli(rack: RunningRack, tmp_path: Path) -> Cli:
    """`convox ...` as a user runs it against the session's rack (CONVOX_HOST + CONVOX_PASSWORD)."""
    config = tmp_path / "convox-config"
    work = tmp_path / "work"
    work.mkdir()
    env = rack.env(config)
    env["PYTHONPATH"] = str(ROOT)
    return Cli(env, work)


@pytest.fixture
def app_name() -> str:
    """A fresh app name per test."""
    return f"app-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def busybox_image(docker_engine: str) -> str:
    from tests.images import ensure_busybox_image

    return ensure_busybox_image()


API_RACK = f"{RACK_NAME}-api"
"""The rack name of the API tests' local providers: theirs alone, so that what their workers adopt or what a
test removes afterwards (:func:`remove_labelled_containers`) is never a running rack's of this run."""


def local_settings(data_dir: Path, **fields: object) -> RackSettings:
    """The settings of a local provider (SQLite and files under ``data_dir``, the rack :data:`API_RACK`), for
    a service under test to open as the rack does (tests/contract/conftest.py opens the same)."""
    from shared.config import RackSettings

    return RackSettings(provider="local", data_dir=data_dir, name=API_RACK, **fields)


@pytest.fixture
def api_engine(docker_engine: str) -> Iterator[str]:
    """The Docker Engine, for an API test whose local provider uses it; what the rack :data:`API_RACK` left
    there (containers, volumes, its network, the images its builds made) is removed after the test."""
    yield docker_engine
    remove_labelled_containers(API_RACK)
    made = subprocess.run(
        ["docker", "images", "--quiet", "--filter", f"reference=convox/{API_RACK}-*"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if made:
        subprocess.run(["docker", "rmi", "--force", *sorted(set(made))], capture_output=True, check=False)


def local_provider(data_dir: Path) -> Provider:
    """The real local provider over ``data_dir``, not yet opened (a service's lifespan opens it)."""
    from shared.provider import load_provider

    return load_provider(local_settings(data_dir))


@contextlib.asynccontextmanager
async def on_uvicorn(app: ASGIApp) -> AsyncIterator[int]:
    """``app`` served by a real uvicorn on a free loopback port (websockets need a real server); yields the
    port and stops the server afterwards."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, ws="websockets-sansio", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


# moto in server mode, one per session for every AWS test (tests/aws and tests/contract)
from tests.moto_server import aws, moto_server  # noqa: E402, F401
