"""`convox init`: a Dockerfile and convox.yml for a Python, Node, Ruby, Go or static app, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.manifest import BuildSpec, Health, Scale, parse_manifest
from tests.conftest import ROOT


def init(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "init", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
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
        env={**os.environ, "PYTHONPATH": str(ROOT)},
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
