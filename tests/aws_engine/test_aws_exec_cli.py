"""`convox exec` through the CLI against a rack started on the aws provider (`convox rack start --provider
aws`), into a container on its instance's engine over mutual TLS: the exit code comes back to the shell.

Simulated: AWS (moto; the rack bootstraps its tables, bucket and cluster there instead of an installed
stack, which tests/aws/test_rack_e2e.py covers), the ECS agent (tests/aws_engine/ecs_containers_double.py
plays the task as a real container) and the instance's TLS listener (tests/aws_engine/tls_front_double.py
before this host's engine). The process is started through the provider in the test (a one-off of an image:
the CLI runs only released process types); the exec is the CLI's, through the rack's API and services.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.models import ProcessRunOptions
from shared.provider.aws.certificate import engine_certificates
from shared.provider.aws.provider import AwsProvider
from tests.aws_engine.ecs_containers_double import ContainerAgent
from tests.aws_engine.tls_front_double import TlsFront
from tests.conftest import ROOT, start_rack, stop_rack
from tests.moto_server import MotoServer


class FrontThread:
    """The TLS front double served from an event loop of its own (the test itself is synchronous)."""

    def __init__(self, ca: str, cert: str, key: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.front = asyncio.run_coroutine_threadsafe(TlsFront(ca, cert, key).start(), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.front.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_convox_exec_on_an_aws_rack_exits_with_the_commands_code(
    aws: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: str, busybox_image: str
) -> None:
    import boto3

    name = f"cli-{secrets.token_hex(3)}"
    monkeypatch.setenv("RACK_AWS_BOOTSTRAP", "true")
    made = engine_certificates(name)
    ssm = boto3.client("ssm", region_name="us-east-1")
    for key, value in made.secrets().items():  # what `convox rack install aws` keeps in the rack's secrets
        ssm.put_parameter(Name=f"/convox/{name}/engine/{key}", Value=value, Type="SecureString")

    async def bootstrap() -> None:  # once, before the rack's services start (each would race to make the tables)
        async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path / "p", name=name)):
            pass

    asyncio.run(bootstrap())
    front = FrontThread(made.ca, made.server_cert, made.server_key)
    agent: ContainerAgent | None = None
    rack = start_rack(tmp_path / "data", name, args=("--provider", "aws"))
    try:
        agent = ContainerAgent(name, front.front.address).start()
        env = {**rack.env(tmp_path / "convox"), "PYTHONPATH": str(ROOT)}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "cli.main", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
                check=False,
            )

        created = cli("apps", "create", "shell")
        assert created.returncode == 0, created.stderr

        async def one_off() -> str:
            async with AwsProvider(RackSettings(provider="aws", data_dir=tmp_path / "p", name=name)) as provider:
                options = ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "3600"])
                return (await provider.processes.run("shell", options)).id

        pid = asyncio.run(one_off())
        deadline = time.monotonic() + 30
        while not any(arn.replace("-", "").endswith(pid) for arn in agent.containers):
            assert time.monotonic() < deadline, f"the agent double never ran {pid}: {agent.errors}"
            time.sleep(0.05)
        done = cli("exec", "-a", "shell", pid, "sh", "-c", "echo through-tls; exit 3")
        assert done.returncode == 3, done.stderr
        assert "through-tls" in done.stdout
        assert front.front.accepted > 0
        gone = cli("exec", "-a", "other", pid, "true")
        assert gone.returncode != 0 and "ERROR" in gone.stderr
        # over the rack's own socket it is a raw stream; the engine's connection is TLS, so the service relays it
        env["CONVOX_HOST"] = rack.local_url
        raw = subprocess.run(
            [sys.executable, "-m", "cli.main", "exec", "-a", "shell", pid, "sh", "-c", "cat; echo err >&2; exit 4"],
            input="piped\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (raw.returncode, raw.stdout, raw.stderr) == (4, "piped\n", "err\n")

        def relayed() -> bool:  # the service's line of the stream's end comes once the CLI has its status
            ends = [line for line in rack.log.read_text(errors="replace").splitlines() if "at=stream.end" in line]
            return any("raw=true" in line and "passed=false" in line for line in ends)  # relayed, not passed

        deadline = time.monotonic() + 10
        while not relayed():
            assert time.monotonic() < deadline, "no raw stream's end in the rack's log"
            time.sleep(0.05)
    finally:
        stop_rack(rack)
        if agent is not None:
            agent.stop()
        front.close()
