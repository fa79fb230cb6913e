"""Real manifests deployed end to end on the Docker Engine: linked process types reach each other by the
``*_URL`` the link gives them, and what the rack does not act on is a warning the deploy prints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli

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
    env = cli("run", "web", "echo $REDIS_URL $REDIS_HOST $REDIS_PORT", "--app", app, check=True)
    assert env.stdout.split() == [f"redis://redis.{app}:6379", f"redis.{app}", "6379"]
    ping = cli("run", "web", "redis-cli -u $REDIS_URL ping", "--app", app, timeout=60)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.strip() == "PONG"
