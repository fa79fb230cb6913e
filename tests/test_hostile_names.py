"""Names from the engine are hostile: containers labelled for the rack with an app name that walks out of the
data dir, and an image whose Dockerfile brings the rack's labels, steer nothing and write nothing outside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.names import is_app_name
from tests.conftest import Cli, RunningRack
from tests.test_deploy import SAMPLE, deploy

MARK = "hostile-marker"


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def canary(rack: RunningRack) -> Iterator[Path]:
    """A directory beside the rack's data dir (outside it), with one file in it."""
    path = rack.data_dir.parent / f"canary-{os.getpid()}"
    path.mkdir()
    (path / "keep").write_text("untouched")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def hostile(rack: RunningRack, image: str, app: str) -> str:
    argv = ["docker", "run", "-d", "--label", f"convox.rack={rack.name}", "--label", f"convox.app={app}"]
    argv += ["--label", "convox.type=web", "--label", "convox.release=RHOSTILEAAA"]
    script = f"echo {MARK}; sleep 2; echo {MARK}"
    return subprocess.run([*argv, image, "sh", "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def logs_of(rack: RunningRack, app: str) -> str:
    response = httpx.get(
        f"{rack.url}/apps/{app}/logs", params={"follow": "false"}, auth=("x", rack.password), verify=rack.verify
    )
    assert response.status_code == 200, response.text
    return response.text


def test_containers_labelled_with_an_app_name_out_of_the_data_dir_write_nothing_outside(
    rack: RunningRack, cli: Cli, app_name: str, busybox_image: str, canary: Path
) -> None:
    apps_dir = rack.data_dir / "logs" / "apps"
    walk_out = os.path.relpath(canary, apps_dir)  # ../../../canary-N
    names = [walk_out, f"{walk_out}/sub", "..", "../..", f"{app_name}/../../..", f"{app_name}\n", "a\x00b"]
    cli("apps", "create", app_name, check=True)
    started: list[str] = []
    try:
        for name in names:
            if "\x00" in name:
                continue  # the engine itself refuses a NUL in a label
            started.append(hostile(rack, busybox_image, name))
        started.append(hostile(rack, busybox_image, app_name))  # a name the rack knows: collected as usual
        deadline = time.monotonic() + 30
        while logs_of(rack, app_name).count(MARK) < 2:
            assert time.monotonic() < deadline, "the real app's lines never arrived"
            time.sleep(0.2)
        assert tree(canary) == ["keep"]
        assert (canary / "keep").read_text() == "untouched"
        assert not (rack.data_dir.parent / "0000000000000001.log").exists()
        assert all(is_app_name(p.name) for p in apps_dir.iterdir())
    finally:
        for container in started:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
        cli("apps", "delete", app_name)
    assert tree(canary) == ["keep"]


def test_labels_a_dockerfile_brings_are_dropped_from_the_image_and_steer_nothing(
    rack: RunningRack, cli: Cli, app_name: str, busybox_image: str, canary: Path, tmp_path: Path
) -> None:
    apps_dir = rack.data_dir / "logs" / "apps"
    walk_out = os.path.relpath(canary, apps_dir)
    source = tmp_path / "web"
    shutil.copytree(SAMPLE, source)
    dockerfile = source / "Dockerfile"
    labels = {
        "convox.app": walk_out,
        "convox.rack": rack.name,
        "convox.build": "BHOSTILEAAA",  # would hide the processes' logs
        "convox.oneoff": "true",  # would hide the processes from the formation
        "convox.sandbox": walk_out,
    }
    label_line = "LABEL " + " ".join(f"{key}={json.dumps(value)}" for key, value in labels.items())
    dockerfile.write_text(dockerfile.read_text() + label_line + "\n")
    cli("apps", "create", app_name, check=True)
    try:
        result = deploy(cli, app_name, source)
        assert result.returncode == 0, result.stderr
        containers = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=convox.rack={rack.name}", "--filter",
             f"label=convox.app={app_name}", "--filter", "label=convox.type=web"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(containers) == 1  # the formation counts it (not a one-off): exactly one, none extra
        info = json.loads(subprocess.run(["docker", "inspect", containers[0]], capture_output=True, check=True).stdout)
        built = json.loads(
            subprocess.run(["docker", "image", "inspect", info[0]["Image"]], capture_output=True, check=True).stdout
        )
        brought = {k: v for k, v in (built[0]["Config"]["Labels"] or {}).items() if k.startswith("convox.")}
        assert set(brought) == set(labels) and set(brought.values()) == {""}  # emptied in the image
        got = info[0]["Config"]["Labels"]
        assert got["convox.app"] == app_name
        assert got.get("convox.build", "") == "" and got.get("convox.oneoff", "") in ("", "false")
        assert got.get("convox.sandbox", "") == ""
        deadline = time.monotonic() + 30
        while "web started" not in logs_of(rack, app_name):  # its logs are collected (not taken for a build's)
            assert time.monotonic() < deadline, logs_of(rack, app_name)
            time.sleep(0.2)
        assert tree(canary) == ["keep"]
    finally:
        cli("apps", "delete", app_name)
    assert tree(canary) == ["keep"]


def test_labels_of_an_image_a_service_runs_as_is_are_overridden_at_start(
    rack: RunningRack, cli: Cli, app_name: str, busybox_image: str, canary: Path, tmp_path: Path
) -> None:
    walk_out = os.path.relpath(canary, rack.data_dir / "logs" / "apps")
    tag = f"rack-test/labelled-{app_name}:1"
    label = f'LABEL convox.oneoff="true" convox.build="BHOSTILEAAA" convox.app="{walk_out}"'
    dockerfile = f"FROM {busybox_image}\n{label}\n".encode()
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile, capture_output=True, check=True)
    source = tmp_path / "worker"
    source.mkdir()
    (source / "convox.yml").write_text(f"services:\n  worker:\n    image: {tag}\n    command: sleep 3600\n")
    cli("apps", "create", app_name, check=True)
    try:
        result = deploy(cli, app_name, source)
        assert result.returncode == 0, result.stderr
        found = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=convox.rack={rack.name}", "--filter",
             f"label=convox.app={app_name}", "--filter", "label=convox.type=worker"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(found) == 1  # counted by the formation: not taken for a one-off, none extra started
        info = json.loads(subprocess.run(["docker", "inspect", found[0]], capture_output=True, check=True).stdout)
        labels = info[0]["Config"]["Labels"]
        assert labels["convox.app"] == app_name
        assert labels["convox.oneoff"] == "" and labels["convox.build"] == ""
        deadline = time.monotonic() + 30
        while "worker started" not in logs_of(rack, app_name):
            assert time.monotonic() < deadline, logs_of(rack, app_name)
            time.sleep(0.2)
        assert tree(canary) == ["keep"]
    finally:
        cli("apps", "delete", app_name)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
