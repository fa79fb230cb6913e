"""`convox init`: a Dockerfile and convox.yml for a Python, Node, Ruby, Go or static app, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.manifest import BuildSpec, Health, Scale, parse_manifest
from tests.conftest import ROOT, Cli


def no_rack() -> dict[str, str]:
    """An environment logged in to no rack (so `convox init` asks none which base images its engine can use)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CONVOX_", "RACK_IMAGE_"))}
    return {**env, "CONVOX_CONFIG": str(ROOT / "tests" / "no-such-convox-config")}


def init(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = no_rack()
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "init", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def dockerfile_lines(directory: Path) -> list[str]:
    return (directory / "Dockerfile").read_text().splitlines()


def assert_initialized(directory: Path, kind: str, port: int) -> list[str]:
    """Runs init and checks what every kind shares; returns the Dockerfile's lines."""
    result = init(directory)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"Initializing a {kind} app... OK\n"
    assert f"Wrote {directory / 'Dockerfile'}" in result.stdout
    assert f"Wrote {directory / 'convox.yml'}" in result.stdout
    manifest = parse_manifest((directory / "convox.yml").read_text(), "convox.yml")
    assert list(manifest.services) == ["web"]
    web = manifest.services["web"]
    assert web.build == BuildSpec(path=".", manifest="Dockerfile")
    assert (web.port, web.public) == (port, True)
    assert web.health == Health(path="/")
    assert web.scale == Scale(count=1, memory=256)
    lines = dockerfile_lines(directory)
    assert lines[0].startswith("FROM ")
    assert f"EXPOSE {port}" in lines
    assert ".git" in (directory / ".dockerignore").read_text().splitlines()
    return lines


def test_init_python_app(tmp_path: Path) -> None:
    app = write(
        tmp_path,
        {"requirements.txt": "flask\ngunicorn\n", "app.py": "from flask import Flask\n\napp = Flask(__name__)\n"},
    )
    lines = assert_initialized(app, "python", 3000)
    assert lines[0] == "FROM python:3.12-slim"
    assert "RUN pip install --no-cache-dir -r requirements.txt" in lines
    assert lines[-1] == "CMD exec gunicorn app:app --bind 0.0.0.0:$PORT"
    assert "__pycache__" in (app / ".dockerignore").read_text()


def test_init_node_app(tmp_path: Path) -> None:
    package = {"name": "site", "scripts": {"start": "node server.js"}}
    app = write(tmp_path, {"package.json": json.dumps(package), "package-lock.json": "{}", "server.js": ""})
    lines = assert_initialized(app, "node", 3000)
    assert lines[0] == "FROM node:20-slim"
    assert "RUN npm ci --omit=dev" in lines
    assert lines[-1] == 'CMD ["node", "server.js"]'
    assert "node_modules" in (app / ".dockerignore").read_text()


def test_init_ruby_app(tmp_path: Path) -> None:
    app = write(
        tmp_path,
        {"Gemfile": "gem 'sinatra'\ngem 'puma'\n", "Gemfile.lock": "", "config.ru": "run App\n"},
    )
    lines = assert_initialized(app, "ruby", 3000)
    assert lines[0] == "FROM ruby:3.3-slim"
    assert "COPY Gemfile Gemfile.lock ./" in lines
    assert lines[-1] == "CMD exec bundle exec puma -b tcp://0.0.0.0:$PORT"


def test_init_go_app(tmp_path: Path) -> None:
    app = write(tmp_path, {"go.mod": "module example.com/hello\n\ngo 1.21\n", "main.go": "package main\n"})
    lines = assert_initialized(app, "go", 3000)
    assert lines[0] == "FROM golang:1.22 AS build"
    assert "COPY go.mod ./" in lines
    assert any(line.startswith("RUN CGO_ENABLED=0 go build") and line.endswith(" .") for line in lines)
    assert sum(line.startswith("FROM ") for line in lines) == 2
    assert lines[-1] == 'ENTRYPOINT ["/app"]'


def test_init_static_site(tmp_path: Path) -> None:
    app = write(tmp_path, {"index.html": "<h1>hello</h1>\n", "style.css": ""})
    lines = assert_initialized(app, "static", 80)
    assert lines[0].startswith("FROM nginx:")
    assert "COPY . /usr/share/nginx/html" in lines
    ignored = (app / ".dockerignore").read_text().splitlines()
    assert "Dockerfile" in ignored and "convox.yml" in ignored


def test_init_defaults_to_the_current_directory(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": ""})
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "init"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**no_rack(), "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["Wrote Dockerfile", "Wrote convox.yml"]
    assert (tmp_path / "Dockerfile").is_file()


def test_init_refuses_to_overwrite_an_existing_dockerfile(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": "", "Dockerfile": "FROM mine\n"})
    result = init(tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"ERROR: {tmp_path}/Dockerfile exists (use --force to overwrite)\n"
    assert (tmp_path / "Dockerfile").read_text() == "FROM mine\n"
    assert not (tmp_path / "convox.yml").exists()


def test_init_refuses_to_overwrite_an_existing_convox_yml(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": "", "convox.yml": "services: {}\n"})
    result = init(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"ERROR: {tmp_path}/convox.yml exists")
    assert not (tmp_path / "Dockerfile").exists()


def test_init_force_overwrites_but_keeps_a_dockerignore(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": "", "Dockerfile": "FROM mine\n", ".dockerignore": "secrets\n"})
    result = init(tmp_path, "--force")
    assert result.returncode == 0, result.stderr
    assert dockerfile_lines(tmp_path)[0].startswith("FROM nginx:")
    assert (tmp_path / ".dockerignore").read_text() == "secrets\n"
    assert ".dockerignore" not in result.stdout


def test_init_unknown_project_type_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "hello\n"})
    result = init(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"ERROR: cannot tell what kind of app is in {tmp_path}")
    assert "--type" in result.stderr
    assert not (tmp_path / "Dockerfile").exists() and not (tmp_path / "convox.yml").exists()


def test_init_type_option_chooses_the_kind(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": "", "server.py": "print('hi')\n"})
    assert init(tmp_path, "--type", "static").returncode == 0
    assert dockerfile_lines(tmp_path)[0].startswith("FROM nginx:")
    bad = init(tmp_path, "--type", "cobol", "--force")
    assert bad.returncode == 1
    assert bad.stderr == "ERROR: unknown app type: cobol (one of python, node, ruby, go, static)\n"


def test_init_missing_directory_is_an_error(tmp_path: Path) -> None:
    result = init(tmp_path / "nowhere")
    assert result.returncode == 1
    assert result.stderr == f"ERROR: no such directory: {tmp_path / 'nowhere'}\n"


def test_init_node_app_without_start_script_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": '{"name": "x"}'})
    result = init(tmp_path)
    assert result.returncode == 1
    assert 'has no "start" script' in result.stderr


def test_init_python_app_with_front_end_package_json_stays_python(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": '{"devDependencies": {}}', "main.py": "print('hi')\n"})
    result = init(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "Initializing a python app... OK\n"
    assert dockerfile_lines(tmp_path)[-1] == 'CMD ["python", "main.py"]'


@pytest.mark.parametrize(
    ("files", "command"),
    [
        ({"Procfile": "web: gunicorn site:app -b 0.0.0.0:$PORT\n", "site.py": ""}, "CMD exec gunicorn site:app"),
        (
            {"requirements.txt": "fastapi\nuvicorn\n", "main.py": "from fastapi import FastAPI\napi = FastAPI()\n"},
            "CMD exec uvicorn main:api --host 0.0.0.0 --port $PORT",
        ),
        (
            {"requirements.txt": "django\ngunicorn\n", "manage.py": "", "mysite/wsgi.py": ""},
            "CMD exec gunicorn mysite.wsgi --bind 0.0.0.0:$PORT",
        ),
        (
            {"pyproject.toml": '[project]\nname = "x"\n[project.scripts]\nserve = "x:main"\n'},
            'CMD ["serve"]',
        ),
    ],
)
def test_init_python_start_command_follows_the_app(tmp_path: Path, files: dict[str, str], command: str) -> None:
    write(tmp_path, files)
    result = init(tmp_path)
    assert result.returncode == 0, result.stderr
    assert dockerfile_lines(tmp_path)[-1].startswith(command)


def test_init_go_app_under_cmd_uses_the_modules_go_version(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"go.mod": "module example.com/tool\n\ngo 1.23.1\n", "go.sum": "", "cmd/tool/main.go": "package main\n"},
    )
    result = init(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dockerfile_lines(tmp_path)
    assert lines[0] == "FROM golang:1.23 AS build"
    assert "COPY go.mod go.sum ./" in lines
    assert any(line.endswith(" ./cmd/tool") for line in lines)


def test_init_base_offline_writes_the_debian_bases_of_make_images(tmp_path: Path) -> None:
    python = write(tmp_path / "py", {"requirements.txt": "flask\n", "app.py": "app = Flask(__name__)\n"})
    result = init(python, "--base", "offline")
    assert result.returncode == 0, result.stderr
    lines = dockerfile_lines(python)
    assert lines[0] == "FROM rack-local/python3:bookworm"
    assert "RUN pip install --no-cache-dir -r requirements.txt" in lines  # the base's pip is a venv's
    node = write(tmp_path / "js", {"package.json": '{"scripts": {"start": "node server.js"}}', "server.js": ""})
    assert init(node, "--base", "offline").returncode == 0
    assert dockerfile_lines(node)[0] == "FROM rack-local/node:bookworm"
    assert init(python, "--base", "official", "--force").returncode == 0
    assert dockerfile_lines(python)[0] == "FROM python:3.12-slim"


def test_init_base_offline_is_refused_where_there_is_none(tmp_path: Path) -> None:
    write(tmp_path, {"go.mod": "module example.com/hello\n", "main.go": "package main\n"})
    result = init(tmp_path, "--base", "offline")
    assert result.returncode == 1
    assert result.stderr == "ERROR: there is no offline base for go apps (there is for: python, node)\n"
    assert not (tmp_path / "Dockerfile").exists()
    bad = init(tmp_path, "--base", "alpine")
    assert (bad.returncode, bad.stderr) == (1, "ERROR: unknown base: alpine (one of official, offline)\n")


# -- on the session's rack: init, then deploy, then the app answers ---------------------------------------------

HELLO_PY = """import http.server
import os
import signal
import sys

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as PID 1, nothing else would stop it


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from python {sys.version_info[0]}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Hello).serve_forever()
"""
HELLO_JS = """process.on("SIGTERM", () => process.exit(0));
require("http").createServer((req, res) => res.end("hello from node\\n")).listen(process.env.PORT);
"""


def engine_has(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0


def init_deploy_and_fetch(cli: Cli, app: str, source: Path, official: str, offline: str) -> str:
    """`convox init` logged in to the rack, then `convox apps create` and `convox deploy`; the app's answer."""
    from tests.test_deploy import fetch, info

    result = cli("init", str(source))
    assert result.returncode == 0, result.stderr
    # The machines the suite runs on reach no registry (tests/images.py): the engine has the official base
    # only if someone loaded it, and otherwise init must see that it cannot be pulled and write the offline one.
    if engine_has(official):
        assert dockerfile_lines(source)[0] == f"FROM {official}"
    else:
        assert dockerfile_lines(source)[0] == f"FROM {offline}"
        assert f"The rack's engine cannot pull {official} (no registry answers for it): wrote FROM {offline}" in (
            result.stderr
        )
        assert "--base official" in result.stderr
    cli("apps", "create", app, check=True)
    try:
        deployed = cli("deploy", str(source), "--app", app, timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        return fetch(info(cli, app)["Balancer"], within=30)
    finally:
        cli("apps", "delete", app)


def test_init_then_deploy_a_python_app_that_answers(cli: Cli, app_name: str, tmp_path: Path) -> None:
    source = write(tmp_path / "hello", {"app.py": HELLO_PY, "requirements.txt": "# the standard library serves\n"})
    answer = init_deploy_and_fetch(cli, app_name, source, "python:3.12-slim", "rack-local/python3:bookworm")
    assert answer == "hello from python 3\n"


def test_init_then_deploy_a_node_app_that_answers(cli: Cli, app_name: str, tmp_path: Path) -> None:
    package = {"name": "hello", "private": True, "scripts": {"start": "node server.js"}}
    source = write(tmp_path / "hello", {"package.json": json.dumps(package), "server.js": HELLO_JS})
    answer = init_deploy_and_fetch(cli, app_name, source, "node:20-slim", "rack-local/node:bookworm")
    assert answer == "hello from node\n"


def test_init_names_make_images_when_the_rack_has_neither_base(cli: Cli, tmp_path: Path) -> None:
    source = write(tmp_path / "hello", {"app.py": HELLO_PY})
    cli.env["RACK_IMAGE_PREFIX"] = "rack-test-unbuilt"  # as if `make images` had not run where the rack runs
    result = cli("init", str(source))
    assert result.returncode == 0, result.stderr
    assert dockerfile_lines(source)[0] == "FROM python:3.12-slim"
    if not engine_has("python:3.12-slim"):
        assert result.stderr.splitlines()[1:] == [
            "The rack's engine cannot pull python:3.12-slim (no registry answers for it), nor has it the offline "
            "base rack-test-unbuilt/python3:bookworm: run `make images` where the rack runs, then "
            "`convox init --base offline --force`"
        ]
    chosen = cli("init", str(source), "--base", "offline", "--force")
    assert chosen.returncode == 0, chosen.stderr
    assert dockerfile_lines(source)[0] == "FROM rack-test-unbuilt/python3:bookworm"
    assert chosen.stderr.splitlines()[1:] == [
        "The rack's engine has no rack-test-unbuilt/python3:bookworm yet: run `make images` where the rack runs"
    ]
