"""Builds end to end on the real Docker Engine: `convox build` of a sample app (busybox base made locally),
live output, the release it makes, `.dockerignore`, failed builds, bad uploads, logs, and a build cut off by
a killed builds service."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.provider.local.builds import RESTARTED
from tests.conftest import RUN_ID, Cli, RunningRack, start_rack, stop_rack

CONVOX_YML = """services:
  web:
    build: .
    port: 3000
    command: httpd -f -p 3000 -h /app
"""
DOCKERFILE = """FROM rack-test/busybox:1
COPY . /app
RUN test -e /app/index.html && test -e /app/keep/me.txt
RUN test ! -e /app/secret.txt && test ! -e /app/tmp && test ! -e /app/keep/not-me.txt
RUN echo marker-one && sleep 2 && echo marker-two
CMD ["httpd", "-f", "-p", "3000", "-h", "/app"]
"""
DOCKERIGNORE = "secret.txt\ntmp\nkeep\n!keep/me.txt\n"


def write_app(directory: Path, dockerfile: str = DOCKERFILE, manifest: str = CONVOX_YML) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    (directory / "convox.yml").write_text(manifest)
    (directory / ".dockerignore").write_text(DOCKERIGNORE)
    (directory / "index.html").write_text("hello from the build\n")
    (directory / "secret.txt").write_text("never uploaded\n")
    (directory / "tmp").mkdir(exist_ok=True)
    (directory / "tmp" / "cache.bin").write_bytes(os.urandom(1000))
    (directory / "keep").mkdir(exist_ok=True)
    (directory / "keep" / "me.txt").write_text("kept by an exception\n")
    (directory / "keep" / "not-me.txt").write_text("excluded\n")
    return directory


def api(rack: RunningRack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{rack.url}{path}", verify=rack.verify, auth=("convox", rack.password), timeout=60, **kwargs
    )


def images(rack: RunningRack, app: str) -> list[str]:
    reference = f"reference=convox/{rack.name}-{app}-*"
    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", reference],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def remove_images(rack: RunningRack, app: str) -> None:
    found = images(rack, app)
    if found:
        subprocess.run(["docker", "rmi", "-f", *found], capture_output=True, check=False)


@pytest.fixture
def build_app(rack: RunningRack, cli: Cli, app_name: str, busybox_image: str) -> Iterator[str]:
    cli("apps", "create", app_name, check=True)
    try:
        yield app_name
    finally:
        cli("apps", "delete", app_name)
        remove_images(rack, app_name)


def wait_for(check: Any, within: float = 30, every: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)


def test_build_streams_its_output_live_and_makes_a_release(
    rack: RunningRack, cli: Cli, build_app: str, tmp_path: Path
) -> None:
    source = write_app(tmp_path / "src")
    command = [sys.executable, "-m", "cli.main", "build", str(source), "--app", build_app, "-d", "first build"]
    lines: list[tuple[float, bytes]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env, cwd=cli.cwd) as process:
        assert process.stdout is not None and process.stderr is not None
        for line in iter(process.stdout.readline, b""):
            lines.append((time.monotonic(), line))
        process.wait(120)
        ended = time.monotonic()
        stderr = process.stderr.read().decode()
    output = b"".join(line for _, line in lines).decode()
    assert process.returncode == 0, stderr + output
    assert "Uploading source" in stderr
    # a speed also for a small upload, not "?"
    assert re.search(r"Uploading source.* \d+(\.\d+)? [kMG]?B/s", stderr), stderr
    assert "Step 1/6 : FROM rack-test/busybox:1" in output
    # marker-one came while the build was still running (2 s before it ended), not all at the end
    first = next(at for at, line in lines if line.strip() == b"marker-one")
    assert ended - first > 1.5
    build_id = re.search(r"^Build: (B[A-Z]{10})$", output, re.M)
    release_id = re.search(r"^Release: (R[A-Z]{10})$", output, re.M)
    assert build_id and release_id, output

    build = api(rack, "GET", f"/apps/{build_app}/builds/{build_id[1]}").json()
    assert (build["status"], build["release"], build["description"]) == ("complete", release_id[1], "first build")
    assert build["started"] and build["ended"] and build["error"] == ""
    assert json.loads(build["manifest"])["services"]["web"]["port"] == 3000
    releases = api(rack, "GET", f"/apps/{build_app}/releases")
    if releases.status_code == 200:
        assert [(r["id"], r["build"]) for r in releases.json()] == [(release_id[1], build_id[1])]
    assert images(rack, build_app) == [f"convox/{rack.name}-{build_app}-web:{build_id[1].lower()}"]

    # the image holds the source without what .dockerignore left out (the RUN tests checked it too)
    tag = images(rack, build_app)[0]
    listing = subprocess.run(
        ["docker", "run", "--rm", tag, "find", "/app"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "/app/index.html" in listing and "/app/keep/me.txt" in listing
    assert not {"/app/secret.txt", "/app/tmp", "/app/keep/not-me.txt"} & set(listing)

    table = cli("builds", "--app", build_app, check=True).stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "RELEASE", "STARTED", "ELAPSED", "DESCRIPTION"]
    assert table[1].split()[:3] == [build_id[1], "complete", release_id[1]]
    assert table[1].endswith("first build")
    info = cli("builds", "info", build_id[1], "--app", build_app, check=True).stdout
    assert re.search(r"^Status\s+complete$", info, re.M) and re.search(rf"^Release\s+{release_id[1]}$", info, re.M)
    logs = cli("builds", "logs", build_id[1], "--app", build_app, check=True).stdout
    assert "Step 1/6 : FROM rack-test/busybox:1" in logs and "marker-two" in logs
    assert logs == api(rack, "GET", f"/apps/{build_app}/builds/{build_id[1]}/logs").text


def test_a_failing_build_exits_1_and_makes_no_release(
    rack: RunningRack, cli: Cli, build_app: str, tmp_path: Path
) -> None:
    source = write_app(tmp_path / "src", dockerfile="FROM rack-test/busybox:1\nRUN echo before-failing\nRUN false\n")
    result = cli("build", str(source), "--app", build_app)
    assert result.returncode == 1
    assert "before-failing" in result.stdout
    assert re.search(r"^ERROR: build failed: web: .*returned a non-zero code: 1$", result.stderr, re.M), result.stderr
    assert "Release:" not in result.stdout
    [build] = api(rack, "GET", f"/apps/{build_app}/builds").json()
    assert build["status"] == "failed"
    assert build["release"] == ""
    assert "non-zero code" in build["error"]
    releases = api(rack, "GET", f"/apps/{build_app}/releases")
    if releases.status_code == 200:
        assert releases.json() == []
    assert api(rack, "GET", f"/apps/{build_app}").json()["release"] == ""
    logs = cli("builds", "logs", build["id"], "--app", build_app, check=True).stdout
    assert "before-failing" in logs and "Build failed: web: " in logs


def test_a_build_of_an_unknown_app_fails_before_uploading(cli: Cli, tmp_path: Path) -> None:
    result = cli("build", str(write_app(tmp_path / "src")), "--app", f"nope-{RUN_ID}")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"ERROR: no such app: nope-{RUN_ID}")
    assert "Uploading" not in result.stderr


def tgz(files: dict[str, str], symlinks: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            tgz({"convox.yml": "services:\n  web:\n    build: .\n    scale:\n      count: lots\n", "Dockerfile": ""}),
            "convox.yml: services.web.scale.count: ",
        ),
        (tgz({"convox.yml": CONVOX_YML, "Dockerfile": ""}, {"etc": "/etc"}), "bad archive member 'etc'"),
        (tgz({"convox.yml": CONVOX_YML, "Dockerfile": "", "../escape": "x"}), "bad archive member '../escape'"),
    ],
)
def test_a_bad_upload_is_400_and_records_no_build(rack: RunningRack, build_app: str, body: bytes, message: str) -> None:
    response = api(rack, "POST", f"/apps/{build_app}/builds", content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert api(rack, "GET", f"/apps/{build_app}/builds").json() == []
    uploads = rack.data_dir / "tmp"
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_following_a_running_build_ends_with_it(rack: RunningRack, cli: Cli, build_app: str, tmp_path: Path) -> None:
    dockerfile = "FROM rack-test/busybox:1\nRUN echo early && sleep 2 && echo late\n"
    source = write_app(tmp_path / "src", dockerfile=dockerfile)
    archive = tmp_path / "src.tgz"
    from shared.archive import pack

    with archive.open("wb") as handle:
        pack(source, handle)
    build = api(rack, "POST", f"/apps/{build_app}/builds", content=archive.read_bytes()).json()
    assert build["status"] in ("created", "running")
    logs = cli("builds", "logs", build["id"], "--app", build_app, check=True).stdout
    assert "early" in logs and "late" in logs and "complete: release R" in logs
    assert api(rack, "GET", f"/apps/{build_app}/builds/{build['id']}").json()["status"] == "complete"


# ---- a rack of its own: small limits, and its builds service killed mid-build -----------------------


@pytest.fixture(scope="module")
def small_rack(tmp_path_factory: pytest.TempPathFactory, docker_engine: str) -> Iterator[RunningRack]:
    data_dir = tmp_path_factory.mktemp("small-rack") / "data"
    name = f"test-{RUN_ID}-small"
    running = start_rack(data_dir, name, env={"RACK_BUILDS_MAX_SOURCE_SIZE": str(64 * 1024)})
    try:
        yield running
    finally:
        stop_rack(running)
        from tests.conftest import remove_labelled_containers

        remove_labelled_containers(name)


def test_an_upload_over_the_cap_is_413_and_leaves_nothing(small_rack: RunningRack, tmp_path: Path) -> None:
    assert api(small_rack, "POST", "/apps", json={"name": "big"}).status_code == 201
    source = write_app(tmp_path / "src")
    (source / "blob.bin").write_bytes(os.urandom(200 * 1024))
    user = Cli(small_rack.env(tmp_path / "cfg") | {"PYTHONPATH": str(Path(__file__).parent.parent)}, tmp_path)
    result = user("build", str(source), "--app", "big")
    assert result.returncode == 1
    assert "ERROR: source archive is larger than 64 KiB" in result.stderr
    raw = api(small_rack, "POST", "/apps/big/builds", content=os.urandom(1024 * 1024))
    assert raw.status_code == 413
    assert api(small_rack, "GET", "/apps/big/builds").json() == []
    assert list((small_rack.data_dir / "tmp").iterdir()) == []


def builds_service_pid(rack: RunningRack) -> int:
    entries = json.loads((rack.data_dir / "run" / "processes.json").read_text())
    return int(next((e["pid"] for e in entries if e["name"] == "builds"), 0))


def stored_status(rack: RunningRack, build: str) -> str:
    """The build's status as the rack's state holds it (read without any of its services)."""
    with contextlib.closing(sqlite3.connect(f"file:{rack.data_dir / 'state.db'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT status FROM builds WHERE id = ?", (build,)).fetchone()
    return str(row[0]) if row else ""


def test_a_build_cut_off_by_a_killed_builds_service_is_failed_by_the_owner(
    small_rack: RunningRack, busybox_image: str, tmp_path: Path
) -> None:
    assert api(small_rack, "POST", "/apps", json={"name": "cut"}).status_code == 201
    source = write_app(tmp_path / "src", dockerfile="FROM rack-test/busybox:1\nRUN echo started && sleep 60\n")
    user = Cli(small_rack.env(tmp_path / "cfg") | {"PYTHONPATH": str(Path(__file__).parent.parent)}, tmp_path)
    command = [sys.executable, "-m", "cli.main", "build", str(source), "--app", "cut"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user.env, text=True) as cli:
        logs = small_rack.data_dir / "builds"
        log = wait_for(lambda: next((p for p in logs.glob("B*.log") if "started" in p.read_text()), None))
        build = {"id": log.stem}
        pid = builds_service_pid(small_rack)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # the owner (the logs service's workers) fails it, whether or not the builds service is back yet
        wait_for(lambda: stored_status(small_rack, build["id"]) == "failed")
        print(f"build failed {time.monotonic() - killed:.2f}s after kill -9 of the builds service")
        wait_for(lambda: builds_service_pid(small_rack) not in (0, pid))
        stdout, stderr = cli.communicate(timeout=60)
    # the CLI following the build saw its stream cut, then the build's end: failed, exit 1
    assert cli.returncode == 1, stdout + stderr
    assert stderr.strip().endswith(f"ERROR: build failed: {RESTARTED}"), stderr
    assert "started" in stdout

    def failed() -> dict[str, Any] | None:
        try:
            response = api(small_rack, "GET", f"/apps/cut/builds/{build['id']}")
        except httpx.TransportError:
            return None
        found: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return found if found.get("status") == "failed" else None

    record = wait_for(failed)
    assert record["error"] == RESTARTED
    assert record["release"] == ""
    assert record["ended"]
    assert f"Build failed: {RESTARTED}" in log.read_text()
    assert not (small_rack.data_dir / "builds" / build["id"]).exists()
    # the rack builds again after the restart
    ok = write_app(tmp_path / "ok", dockerfile="FROM rack-test/busybox:1\nRUN echo fine\n")
    result = user("build", str(ok), "--app", "cut")
    assert result.returncode == 0, result.stderr
    subprocess.run(["docker", "rmi", "-f", *images(small_rack, "cut")], capture_output=True, check=False)


def test_a_link_out_of_the_source_is_refused_before_uploading_unless_ignored(
    rack: RunningRack, cli: Cli, build_app: str, tmp_path: Path
) -> None:
    source = write_app(tmp_path / "src", dockerfile="FROM rack-test/busybox:1\nCOPY . /app\n")
    (source / "host-etc").symlink_to("/etc")
    result = cli("build", str(source), "--app", build_app)
    assert result.returncode == 1
    assert "ERROR: host-etc: symbolic link out of the tree (/etc)" in result.stderr
    assert "Uploading" not in result.stderr
    with (source / ".dockerignore").open("a") as handle:
        handle.write("host-etc\n")
    assert cli("build", str(source), "--app", build_app).returncode == 0
