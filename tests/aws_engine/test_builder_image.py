"""The real builder image (``make images``: rack-local/builder, the program services/builder) run as the build
task of a rack started on the aws provider against its installed stack, on moto.

What is real: the rack (`convox rack install aws`, `convox rack start --provider aws --stack`, its TLS API
with its own self-signed certificate), the CLI (`convox deploy`, `convox build`), the builder image and
everything it does (it reads its task environment, downloads the source from the presigned S3 URL the rack
made, builds each process type with the local Docker Engine through the socket its task definition mounts,
pushes over the registry protocol with the authorisation the rack passed, writes its output to stdout and
reports to the rack's report route with the build's token, trusting only the certificate named in RACK_CA).

Simulated, each a test double under tests/, never imported by the product:
- AWS: moto in server mode (tests/moto_server.py): no instance boots, no task runs.
- The ECS container agent: tests/aws/ecs_agent_double.register_instances registers the instances so that
  RunTask places the build task; tests/aws_engine/build_agent_double.py then starts that task's container on
  the local Docker Engine from the task definition and overrides exactly as moto stores them (image,
  environment, host volume and mount point of the Docker socket, host network, memory), ships its stdout to
  the build's log stream with PutLogEvents as the awslogs driver does, and stops the task at its exit.
- ECR's registry (moto has no registry data plane): tests/aws_engine/registry_double, Debian's
  docker-registry (the Distribution registry, the v2 protocol ECR serves) on 127.0.0.1 (the engine treats
  127.0.0.0/8 as an insecure registry), named by the rack setting RACK_AWS_BUILD_REGISTRY in place of the
  account's ECR host. The builder gets moto's GetAuthorizationToken as BUILD_AUTH and presents it; this
  registry does not check it.
- The rack's API on ECS: nothing runs it on moto, so the rack runs here (`rack start --stack`), reached by
  the builder on the instance's network (the host's loopback) at RACK_AWS_REPORT_URL.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.aws import ecs_agent_double
from tests.aws.builder_double import boto
from tests.aws.test_install import convox
from tests.aws_engine.build_agent_double import run_build_task
from tests.conftest import ROOT, RUN_ID, RunningRack, free_port, remove_labelled_containers, start_rack, stop_rack
from tests.moto_server import MotoServer

BUILDER_IMAGE = "rack-local/builder:bookworm"
REGISTRY_IMAGE = "rack-test/registry-double:1"
LABEL = f"test-builder-{RUN_ID}"
"""Every container this module starts carries convox.rack=LABEL (removed at the end)."""
MANIFEST = """services:
  web:
    build: .
    port: 3000
  worker:
    build:
      path: ./worker
      args:
        - GREETING
        - SHAPE=round
    command: sleep 600
"""
DOCKERFILE = "FROM rack-local/debian:bookworm\nRUN echo built-web-{nonce} > /built\nCMD cat /built\n"
WORKER_DOCKERFILE = (
    'FROM rack-local/debian:bookworm\nARG GREETING\nARG SHAPE\nRUN echo "worker says $GREETING, $SHAPE"\n'
)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600, check=False)
    assert not check or done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """The registry double on 127.0.0.1:PORT (its image built here from Debian's package, cached)."""
    if not shutil.which("docker"):
        pytest.fail("these tests need the Docker Engine (make docker)")
    made = subprocess.run(
        ["bash", str(ROOT / "images" / "build.sh"), "builder"], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, f"images/build.sh builder (the image of this checkout's builder): {made.stderr}"
    missing = [
        i
        for i in (BUILDER_IMAGE, "rack-local/debian:bookworm")
        if docker("image", "inspect", i, check=False).returncode
    ]
    assert not missing, f"missing {', '.join(missing)}: run `make images`"
    docker("build", "-q", "--network", "host", "-t", REGISTRY_IMAGE, str(Path(__file__).parent / "registry_double"))
    port = free_port()
    docker("run", "-d", "--label", f"convox.rack={LABEL}", "-p", f"127.0.0.1:{port}:5000", REGISTRY_IMAGE)
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{host}/v2/", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the registry double did not answer"
        time.sleep(0.1)
    try:
        yield host
    finally:
        remove_labelled_containers(LABEL)
        pushed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", f"{host}/*/*", check=False).stdout.split()
        if pushed:
            docker("rmi", "-f", *pushed, check=False)


@dataclass
class Installed:
    name: str
    rack: RunningRack
    config: Path
    env: dict[str, str]

    def cli(self, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=self.rack.password if args[0] == "login" else None,
            check=False,
        )

    def popen(self, cwd: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def build(self, build: str) -> dict[str, str]:
        response = httpx.get(
            f"{self.rack.url}/apps/shop/builds/{build}", auth=("convox", self.rack.password), verify=self.rack.verify
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


def install(aws: MotoServer, tmp_path: Path, registry: str, rack_env: dict[str, str] | None = None) -> Installed:
    name = f"bld{secrets.token_hex(3)}"
    config = tmp_path / "convox"
    installed = convox(
        aws, config, "rack", "install", "aws", "--name", name, "InstanceCount=1", f"BuildImage={BUILDER_IMAGE}"
    )
    assert installed.returncode == 0, installed.stderr
    ecs_agent_double.register_instances(name)
    port = free_port()
    rack = start_rack(
        tmp_path / "data",
        name,
        password=None,
        port=port,
        env={
            "RACK_AWS_REPORT_URL": f"https://127.0.0.1:{port}",  # the instance's network: this host's loopback
            "RACK_AWS_BUILD_REGISTRY": registry,
            **(rack_env or {}),
        },
        args=("--provider", "aws", "--stack", name),
    )
    env = {
        **aws.env(),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CONVOX_CONFIG": str(config),
        "PYTHONPATH": str(ROOT),
    }
    done = Installed(name, rack, config, env)
    return done


def ended(cli: subprocess.Popen[str], output: str, timeout: float = 120) -> tuple[str, str]:
    """The CLI's output once it has ended (it follows the build to its end)."""
    try:
        return cli.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        cli.kill()
        out, err = cli.communicate()
        raise AssertionError(f"the CLI did not end: {out}{err}\nthe builder's output:\n{output}") from None


def source(tmp_path: Path, dockerfile: str) -> Path:
    directory = tmp_path / "source"
    (directory / "worker").mkdir(parents=True)
    (directory / "convox.yml").write_text(MANIFEST)
    (directory / "Dockerfile").write_text(dockerfile)
    (directory / "worker" / "Dockerfile").write_text(WORKER_DOCKERFILE)
    return directory


@pytest.fixture
def installed(aws: MotoServer, tmp_path: Path, registry: str, request: pytest.FixtureRequest) -> Iterator[Installed]:
    rack_env = getattr(request, "param", None)
    done = install(aws, tmp_path, registry, rack_env)
    try:
        work = tmp_path
        assert done.cli(work, "login", done.rack.url).returncode == 0
        created = done.cli(work, "apps", "create", "shop")
        assert created.returncode == 0, created.stderr
        assert done.cli(work, "env", "set", "GREETING=hello", "-a", "shop").returncode == 0
        yield done
    finally:
        stop_rack(done.rack)
        remove_labelled_containers(LABEL)


def test_the_builder_image_builds_each_process_type_pushes_it_and_reports_so_the_deploy_completes(
    installed: Installed, registry: str, tmp_path: Path
) -> None:
    nonce = secrets.token_hex(4)
    app = source(tmp_path, DOCKERFILE.format(nonce=nonce))
    deploy = installed.popen(tmp_path, "deploy", str(app), "-a", "shop")
    ran = run_build_task(installed.name, "shop", LABEL)
    output = "\n".join(ran.lines)
    out, err = ended(deploy, output)
    assert ran.exit_code == 0, output
    assert deploy.returncode == 0, err + out
    build_id = ran.task.env["BUILD_ID"]
    build = installed.build(build_id)
    assert build["status"] == "complete" and build["release"], build
    assert f"Release: {build['release']}" in out
    # what the build task got: the Docker socket mounted, the instance's network, no S3 key of the rack's
    definition = ran.task.described["definition"]
    assert definition["networkMode"] == "host"
    assert definition["volumes"] == [{"name": "docker", "host": {"sourcePath": "/var/run/docker.sock"}}]
    assert installed.rack.password not in json.dumps(ran.task.described, default=str)
    assert ran.task.env["SOURCE_URL"].startswith("http") and "X-Amz-Signature=" in ran.task.env["SOURCE_URL"]
    # each process type built from its own context (the worker with the build arg from the app's env) and pushed
    tag = build_id.lower()
    for service in ("web", "worker"):
        listed = httpx.get(f"http://{registry}/v2/{installed.name}/shop/tags/list", timeout=10).json()
        assert f"{service}.{tag}" in listed["tags"], listed
        assert f"Pushed {registry}/{installed.name}/shop:{service}.{tag} (sha256:" in output
    assert f"built-web-{nonce}" in output and "worker says hello, round" in output, output
    docker("rmi", f"{registry}/{installed.name}/shop:web.{tag}")  # pulled back from the registry: really pushed
    docker("pull", f"{registry}/{installed.name}/shop:web.{tag}")
    shown = docker("run", "--rm", "--label", f"convox.rack={LABEL}", f"{registry}/{installed.name}/shop:web.{tag}")
    assert shown.stdout.strip() == f"built-web-{nonce}"
    # the release runs what was pushed; the output is the build's log (the awslogs stream the rack reads)
    ecs = boto("ecs")
    service = ecs.describe_services(cluster=installed.name, services=[f"{installed.name}-shop_web"])["services"][0]
    image = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"][
        "containerDefinitions"
    ][0]["image"]
    assert image == f"{registry}/{installed.name}/shop:web.{tag}"
    logs = installed.cli(tmp_path, "builds", "logs", build_id, "-a", "shop")
    assert logs.returncode == 0 and f"built-web-{nonce}" in logs.stdout and "Reported to the rack" in logs.stdout


def test_a_failing_dockerfile_ends_the_build_failed_with_its_output_in_the_build_log(
    installed: Installed, tmp_path: Path
) -> None:
    app = source(tmp_path, "FROM rack-local/debian:bookworm\nRUN echo about-to-fail-7 && exit 7\n")
    build = installed.popen(tmp_path, "build", str(app), "-a", "shop")
    ran = run_build_task(installed.name, "shop", LABEL)
    _, err = ended(build, "\n".join(ran.lines))
    assert ran.exit_code == 1, "\n".join(ran.lines)
    assert build.returncode == 1 and "ERROR:" in err, err
    record = installed.build(ran.task.env["BUILD_ID"])
    assert record["status"] == "failed" and record["release"] == ""
    assert re.search(r"web: .*returned a non-zero code: 7", record["error"]), record
    logs = installed.cli(tmp_path, "builds", "logs", ran.task.env["BUILD_ID"], "-a", "shop")
    assert "about-to-fail-7" in logs.stdout and "Build failed: web:" in logs.stdout, logs.stdout
    assert "Pushing" not in logs.stdout  # nothing is pushed when a process type fails


def other_certificate() -> str:
    from shared.tls import self_signed

    return self_signed("not the rack", ["localhost"], ["127.0.0.1"])[0].decode()


@pytest.mark.parametrize("installed", [{"RACK_AWS_REPORT_CA": other_certificate()}], indirect=True)
def test_a_builder_told_to_trust_another_certificate_refuses_to_build_or_report(
    installed: Installed, tmp_path: Path
) -> None:
    app = source(tmp_path, DOCKERFILE.format(nonce="x"))
    build = installed.popen(tmp_path, "build", str(app), "-a", "shop")
    ran = run_build_task(installed.name, "shop", LABEL)
    output = "\n".join(ran.lines)
    assert ran.exit_code == 3, output
    assert "is not the rack this build trusts" in output and "not building, not reporting" in output
    assert "Building" not in output
    record = installed.build(ran.task.env["BUILD_ID"])
    assert record["status"] == "running"  # no report reached the rack (the owner fails it once ECS stops its task)
    build.kill()
    build.communicate(timeout=30)
