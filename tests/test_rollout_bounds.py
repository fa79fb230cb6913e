"""A roll-out within the process type's deployment bounds, watched on the Docker Engine: with count 4,
minimum 50 and maximum 100, processes are replaced in batches, at least 2 serve (answer on their port) at
every moment and never more than 4 run in all; a roll-out that fails goes back to the serving release within
the same bounds."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import Cli

ROLLING = """
services:
  web:
    image: {image}
    command: >-
      sh -c 'test "$MARK" != bad || exit 1; mkdir -p /www; echo $MARK > /www/index.html; sleep 1;
      exec httpd -f -p 3000 -h /www'
    port: 3000
    environment:
      - MARK=first
    deployment:
      minimum: 50
      maximum: 100
    termination:
      grace: 1
    drain: 1
    scale:
      count: 4
      memory: 16
"""


@dataclass
class Sample:
    running: int
    """Processes of the type the Engine runs (old and new)."""
    serving: list[str]
    """What each process that answers on its port serves (its release's MARK)."""


def engine() -> httpx.Client:
    host = os.environ.get("DOCKER_HOST", "")
    socket = host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"
    return httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://docker", timeout=5)


def sample(docker: httpx.Client, app: str) -> Sample:
    filters = json.dumps({"label": [f"convox.app={app}", "convox.type=web"]})
    containers = docker.get("/containers/json", params={"filters": filters}).raise_for_status().json()
    serving = []
    for container in containers:
        for network in ((container.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if network.get("IPAddress"):
                try:
                    answer = httpx.get(f"http://{network['IPAddress']}:3000/", timeout=0.5)
                except httpx.HTTPError:
                    break
                if answer.status_code == 200:
                    serving.append(answer.text.strip())
                break
    return Sample(running=len(containers), serving=serving)


def test_a_roll_out_keeps_the_deployment_minimum_serving_and_never_runs_more_than_its_maximum(
    cli: Cli, app_name: str, busybox_image: str, tmp_path: Path
) -> None:
    source = tmp_path / "rolling"
    source.mkdir()
    (source / "convox.yml").write_text(ROLLING.format(image=busybox_image))
    cli("apps", "create", app_name, check=True)

    def watched(mark: str) -> tuple[int, list[Sample]]:
        """Promote ``MARK=mark`` while the Engine is watched: the CLI's exit code and what was seen."""
        samples: list[Sample] = []
        done = threading.Event()

        def watch() -> None:
            with engine() as docker:
                while not done.is_set():
                    samples.append(sample(docker, app_name))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            promoted = cli("env", "set", f"MARK={mark}", "--promote", "--app", app_name, timeout=300)
        finally:
            done.set()
            watcher.join()
        assert len(samples) > 10
        return promoted.returncode, samples

    try:
        deployed = cli("deploy", str(source), "--app", app_name, timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        with engine() as docker:
            assert sample(docker, app_name).serving == ["first"] * 4
        code, samples = watched("second")
        assert code == 0
        assert max(s.running for s in samples) == 4, samples  # the maximum: 100% of 4
        assert min(len(s.serving) for s in samples) >= 2, samples  # the minimum: 50% of 4
        # in batches: old and new served side by side, with only part of the old ones left
        assert any(s.serving.count("first") == 2 and s.serving.count("second") == 2 for s in samples), samples
        with engine() as docker:
            assert sample(docker, app_name).serving == ["second"] * 4

        # the new processes exit: the 2 old ones stopped for them come back, the minimum still serving
        code, samples = watched("bad")
        assert code != 0
        assert max(s.running for s in samples) <= 4, samples
        assert min(len(s.serving) for s in samples) >= 2, samples
        assert set().union(*(s.serving for s in samples)) == {"second"}
        assert any(len(s.serving) == 2 for s in samples), samples  # it had begun: 2 old ones had stopped
        with engine() as docker:
            assert sample(docker, app_name).serving == ["second"] * 4
    finally:
        cli("apps", "delete", app_name)
