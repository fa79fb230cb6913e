"""moto in server mode: a real HTTP AWS endpoint on loopback, one per test session.

``moto_server`` starts ``python -m moto.server`` on a free loopback port and stops it at the end of the
session; the session fails (never skips) when it cannot start. ``aws`` points the standard AWS settings at
it for one test (``AWS_ENDPOINT_URL``, fake keys, a region), resets moto's state before the test, and pins
ECS tasks at RUNNING (moto otherwise walks each task to STOPPED over four describes).

Use it from a conftest: ``from tests.moto_server import aws, moto_server  # noqa: F401``.
Simulated: every AWS API (moto 5; what it does and does not implement is in docs/aws.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

START_TIMEOUT = 60.0
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAMOTOTESTKEY00000",
    "AWS_SECRET_ACCESS_KEY": "moto-test-secret-key-not-real",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass(frozen=True)
class MotoServer:
    url: str
    log: Path

    def env(self) -> dict[str, str]:
        """What a subprocess needs to talk to this moto and nothing else (no profile, no metadata service)."""
        return {
            **FAKE_ENV,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset", timeout=30).raise_for_status()
        httpx.post(
            f"{self.url}/moto-api/state-manager/set-transition",
            json={"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1_000_000_000}},
            timeout=30,
        ).raise_for_status()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_ENV, "MOTO_ALLOW_NONEXISTENT_REGION": "false"},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto_server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/moto-api/data.json", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                tail = log.read_text()[-4000:]
                pytest.fail(f"moto_server did not answer on {url} within {START_TIMEOUT:.0f} s:\n{tail}")
            time.sleep(0.1)  # polling a condition (the port answers), not a fixed wait
        yield MotoServer(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A clean moto for this test, with this process's AWS settings pointed at it."""
    moto_server.reset()
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return moto_server
