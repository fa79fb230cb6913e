"""The build commands' own pieces: what is always uploaded, the websocket address, elapsed times."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

from cli.building import always_sent, pack_source, speed_column
from cli.cmd_builds import elapsed
from cli.config import Rack
from cli.stream import socket_url
from shared.dockerignore import Matcher, leaves_out
from shared.protocol import Build

MANIFEST = """services:
  web:
    build: .
  api:
    build:
      path: api
      manifest: docker/Dockerfile.api
  db:
    image: postgres
"""


def test_the_manifest_dockerfiles_and_dockerignores_are_always_sent(tmp_path: Path) -> None:
    (tmp_path / "convox.yml").write_text(MANIFEST)
    assert always_sent(tmp_path, "") == {
        ".dockerignore",
        "Dockerfile",
        "convox.yml",
        "docker-compose.yml",
        "api/docker/Dockerfile.api",
        "api/.dockerignore",
    }
    assert "other.yml" in always_sent(tmp_path, "other.yml")  # missing or broken: sent as named, the rack says why


def test_an_ignored_manifest_and_dockerfile_still_go_up(tmp_path: Path) -> None:
    (tmp_path / "convox.yml").write_text(MANIFEST)
    (tmp_path / "api" / "docker").mkdir(parents=True)
    (tmp_path / "api" / "docker" / "Dockerfile.api").write_text("FROM scratch\n")
    (tmp_path / "api" / "main.py").write_text("print()\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "notes.txt").write_text("left out\n")
    (tmp_path / ".dockerignore").write_text("*\n!api/main.py\n")
    archive = tmp_path.parent / "source.tgz"
    pack_source(tmp_path, archive, "")
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == [".dockerignore", "Dockerfile", "api/docker/Dockerfile.api", "api/main.py", "convox.yml"]


def test_leaves_out_says_whether_a_dockerignore_excludes_any_path_of_the_tree(tmp_path: Path) -> None:
    (tmp_path / "src" / "deep").mkdir(parents=True)
    (tmp_path / "src" / "deep" / "trace.log").write_text("x\n")
    (tmp_path / "src" / "main.py").write_text("print()\n")
    assert not leaves_out(tmp_path)  # no .dockerignore
    assert not leaves_out(tmp_path, Matcher(["secret.txt", "main.py"]))  # only the root's main.py, not src's
    assert leaves_out(tmp_path, Matcher(["**/*.log"]))
    assert not leaves_out(tmp_path, Matcher(["**/*.log", "!src/deep/trace.log"]))
    (tmp_path / ".dockerignore").write_text("src/deep\n")
    assert leaves_out(tmp_path)


def test_a_dockerignore_that_leaves_nothing_out_sends_everything_without_parsing_the_manifest(
    tmp_path: Path,
) -> None:
    source = tmp_path / "app"
    (source / "www").mkdir(parents=True)
    (source / "convox.yml").write_text(MANIFEST)
    (source / "Dockerfile").write_text("FROM scratch\n")
    (source / "www" / "index.html").write_text("hi\n")
    (source / ".dockerignore").write_text("secret.txt\n")  # no such file: nothing is left out
    archive = tmp_path / "source.tgz"
    script = (
        "import sys; from pathlib import Path; from cli.building import pack_source; "
        f"pack_source(Path({str(source)!r}), Path({str(archive)!r}), ''); "
        "print('shared.manifest' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == [".dockerignore", "Dockerfile", "convox.yml", "www", "www/index.html"]


def test_websocket_url_follows_the_scheme() -> None:
    assert socket_url(Rack("http://127.0.0.1:5443", "pw"), "/apps/a/builds/B/logs") == (
        "ws://127.0.0.1:5443/apps/a/builds/B/logs"
    )
    assert socket_url(Rack("https://rack.example.com", "pw"), "/x") == "wss://rack.example.com/x"


def build(started: str | None, ended: str | None = None) -> Build:
    return Build(
        id="BAPRZPQKXNE",
        app="a",
        status="complete",
        description="",
        manifest="",
        release="",
        started=started,
        ended=ended,
        error="",
    )


def test_elapsed_reads_like_a_duration() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert elapsed(build(None)) == ""
    assert elapsed(build("2026-01-01T11:59:59.200000+00:00", "2026-01-01T12:00:00+00:00")) == "0.8s"
    assert elapsed(build("2026-01-01T11:59:55.600000Z", "2026-01-01T12:00:00Z")) == "4.4s"
    assert elapsed(build("2026-01-01T11:59:48+00:00", None), now) == "12s"
    assert elapsed(build("2026-01-01T11:56:56Z", "2026-01-01T12:00:00Z")) == "3m4s"
    assert elapsed(build("2026-01-01T10:58:00+00:00", "2026-01-01T12:00:00+00:00")) == "1h2m"


def test_the_upload_speed_shows_also_for_an_upload_of_one_chunk() -> None:
    from rich.console import Console
    from rich.progress import Progress

    clock = [100.0]
    progress = Progress(console=Console(file=io.StringIO()), get_time=lambda: clock[0])
    task = progress.add_task("upload", total=4096)
    column = speed_column()
    assert str(column.render(progress.tasks[0])) == "?"  # nothing sent yet
    clock[0] += 0.5
    progress.advance(task, 4096)  # one chunk, the whole upload: too few samples for rich's own estimate
    assert str(column.render(progress.tasks[0])) == "8.2 kB/s"
