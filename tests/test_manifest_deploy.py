"""Real manifests deployed end to end on the Docker Engine: linked process types reach each other by the
``*_URL`` the link gives them, and what the rack does not act on is a warning the deploy prints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, RunningRack

REDIS_IMAGE = "rack-local/redis:bookworm"
CLIENTS_IMAGE = "rack-local/clients:bookworm"

LINKED = f"""
web:
  image: {CLIENTS_IMAGE}
  command: sleep infinity
  links:
    - redis
  restart: always
redis:
  image: {REDIS_IMAGE}
  command: redis-server --protected-mode no
  ports:
    - "6379"
"""


def have_image(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0


@pytest.fixture
def linked_app(cli: Cli, app_name: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    for image in (REDIS_IMAGE, CLIENTS_IMAGE):
        if not have_image(image):
            pytest.skip(f"{image} is not built here (make images builds it)")
    source = tmp_path / "linked"
    source.mkdir()
    (source / "docker-compose.yml").write_text(LINKED)
    cli("apps", "create", app_name, check=True)
    try:
        yield app_name, source
    finally:
        cli("apps", "delete", app_name)


def test_a_linked_redis_answers_at_the_url_the_link_gives(cli: Cli, linked_app: tuple[str, Path]) -> None:
    app, source = linked_app
    deployed = cli("deploy", str(source), "--app", app, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    assert "WARNING: docker-compose.yml: web.restart is not supported by this rack\n" in deployed.stderr
    assert deployed.stderr.count("WARNING:") == 1
    env = cli("run", "--app", app, "web", "echo $REDIS_URL $REDIS_HOST $REDIS_PORT", check=True)
    assert env.stdout.split() == [f"redis://redis.{app}:6379", f"redis.{app}", "6379"]
    ping = cli("run", "--app", app, "web", "redis-cli -u $REDIS_URL ping", timeout=60)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.strip() == "PONG"


VOLUME_APP = """
services:
  web:
    image: {image}
    command: sh -c 'echo $RELEASE_MARK >> /data/marks; exec httpd -f -p 3000 -h /data'
    port: 3000
    volumes:
      - /data
    environment:
      - RELEASE_MARK=first
    termination:
      grace: 1
    drain: 1
    scale:
      memory: 16
timers:
  hourly:
    schedule: "0 * * * *"
    command: ls /data
    service: web
"""


def app_volumes(app: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=convox.app={app}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_a_volume_keeps_its_data_across_releases_is_shared_with_one_offs_and_goes_with_the_app(
    cli: Cli, app_name: str, busybox_image: str, tmp_path: Path
) -> None:
    from tests.test_deploy import fetch, info

    source = tmp_path / "volume"
    source.mkdir()
    (source / "convox.yml").write_text(VOLUME_APP.format(image=busybox_image))
    cli("apps", "create", app_name, check=True)
    try:
        deployed = cli("deploy", str(source), "--app", app_name, timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        assert fetch(info(cli, app_name)["Balancer"], "/marks") == "first\n"
        assert len(app_volumes(app_name)) == 1
        # a one-off of the type mounts the type's volume: it reads what web wrote, web serves what it writes
        read = cli("run", "--app", app_name, "web", "cat /data/marks", input="")
        assert (read.returncode, read.stdout) == (0, "first\n"), read.stderr
        cli("run", "--app", app_name, "web", "echo from-run > /data/ran", input="", check=True)
        assert fetch(info(cli, app_name)["Balancer"], "/ran") == "from-run\n"
        listed = cli("timers", "--app", app_name, check=True).stdout.splitlines()
        assert listed[0].split() == ["NAME", "SCHEDULE", "SERVICE", "COMMAND", "LAST", "RUN", "EXIT", "NEXT", "RUN"]
        assert listed[1].split()[:8] == ["hourly", "0", "*", "*", "*", "*", "web", "ls"]
        assert "in " in listed[1]  # the next run
        cli("env", "set", "RELEASE_MARK=second", "--promote", "--app", app_name, check=True, timeout=300)
        assert fetch(info(cli, app_name)["Balancer"], "/marks") == "first\nsecond\n"  # the new process appended
    finally:
        deleted = cli("apps", "delete", app_name)
    assert deleted.returncode == 0, deleted.stderr
    assert app_volumes(app_name) == []


TWO_PORTS = """
version: "2"
services:
  web:
    image: {image}
    command: >-
      sh -c 'mkdir -p /a /b; echo one > /a/index.html; echo two > /b/index.html;
      httpd -p 3001 -h /b; exec httpd -f -p 3000 -h /a'
    ports:
      - "80:3000"
      - "443:3001"
      - "5432"
    mem_limit: 16m
"""


def test_a_two_port_compose_app_answers_on_both_balancer_ports(
    cli: Cli, rack: RunningRack, app_name: str, busybox_image: str, tmp_path: Path
) -> None:
    from tests.test_builds import api
    from tests.test_deploy import fetch

    source = tmp_path / "two"
    source.mkdir()
    (source / "docker-compose.yml").write_text(TWO_PORTS.format(image=busybox_image))
    cli("apps", "create", app_name, check=True)
    try:
        deployed = cli("deploy", str(source), "--app", app_name, timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        (web,) = api(rack, "GET", f"/apps/{app_name}/formation").json()
        host, _, main = web["balancer"].rpartition(":")
        first, second, internal = web["ports"]
        assert first == f"{main}:3000" and second.endswith(":3001") and internal == "5432"
        (process,) = api(rack, "GET", f"/apps/{app_name}/processes").json()
        assert process["ports"] == sorted([first, second, internal])  # every mapping, as the balancers serve them
        assert fetch(web["balancer"]) == "one\n"
        assert fetch(f"{host}:{second.split(':')[0]}") == "two\n"
    finally:
        cli("apps", "delete", app_name)
