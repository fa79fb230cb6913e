"""`convox` commands: init.

`convox init [DIR]` looks at a source tree, tells what kind of app it is (Python, Node, Ruby, Go or a static site)
and writes a ``Dockerfile`` and a ``convox.yml`` that deploy it: one service ``web`` with a public port, a health
check on ``/`` and one 256 MB process. The generated Dockerfiles start from the official images, or for Python
and Node from the offline bases of `make images` when the rack's engine cannot pull (:mod:`cli.init_base`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

KINDS = ("python", "node", "ruby", "go", "static")
PORT = 3000
"""Where every generated app listens (the Dockerfile sets ``PORT``); the static site's nginx listens on 80."""


class InitError(Exception):
    """The source tree is not one ``convox init`` can write files for."""


@dataclass
class Plan:
    kind: str
    dockerfile: str
    port: int = PORT
    ignore: list[str] = field(default_factory=list)

    def files(self) -> dict[str, str]:
        """The files to write, by name: always the Dockerfile and convox.yml."""
        return {"Dockerfile": self.dockerfile, "convox.yml": convox_yml(self.port)}

    def dockerignore(self) -> str:
        return "\n".join([".git", ".convox", *self.ignore]) + "\n"

    def bases(self) -> list[str]:
        """The images the Dockerfile starts from (not its own stages)."""
        stages: set[str] = set()
        images: list[str] = []
        for line in self.dockerfile.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].upper() == "FROM":
                if words[1] not in stages:
                    images.append(words[1])
                if len(words) >= 4 and words[2].upper() == "AS":
                    stages.add(words[3])
        return images


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("init")
    def init(
        directory: Annotated[Path, typer.Argument(metavar="DIR", help="The app's source directory.")] = Path("."),
        force: Annotated[
            bool, typer.Option("--force", "-f", help="Overwrite an existing Dockerfile and convox.yml.")
        ] = False,
        kind: Annotated[
            str | None,
            typer.Option("--type", "-t", help=f"The kind of app, when it cannot be told: {', '.join(KINDS)}."),
        ] = None,
        base: Annotated[
            str | None,
            typer.Option(
                "--base",
                "-b",
                help="official (python:3.12-slim, node:20-slim...) or offline (`make images`: Python and Node). "
                "Default: official, unless the rack the CLI is logged in to cannot pull it and has the offline one.",
            ),
        ] = None,
    ) -> None:
        """Write a Dockerfile and convox.yml for the app in DIR (Python, Node, Ruby, Go or a static site)."""
        import sys

        from cli import output
        from cli.errors import CliError
        from cli.init_base import BASES, choose

        if not directory.is_dir():
            raise CliError(f"no such directory: {directory}")
        if kind is not None and kind not in KINDS:
            raise CliError(f"unknown app type: {kind} (one of {', '.join(KINDS)})")
        if base is not None and base not in BASES:
            raise CliError(f"unknown base: {base} (one of {', '.join(BASES)})")
        try:
            plan = make_plan(directory, kind or detect(directory))
        except InitError as exc:
            raise CliError(str(exc)) from None
        files = plan.files()
        existing = [directory / name for name in files if (directory / name).exists()]
        if existing and not force:
            taken = ", ".join(f"{path} exists" for path in existing)
            raise CliError(f"{taken} (use --force to overwrite)")
        choice = choose(plan.kind, plan.bases(), base)
        if choice.offline:
            plan = make_plan(directory, plan.kind, offline=True)
            files = plan.files()
        written: list[Path] = []
        with output.step(f"Initializing a {plan.kind} app"):
            for name, text in files.items():
                (directory / name).write_text(text)
                written.append(directory / name)
            ignore = directory / ".dockerignore"
            if not ignore.exists():  # never replaced: it may list what the user keeps out of images
                ignore.write_text(plan.dockerignore())
                written.append(ignore)
        for path in written:
            print(f"Wrote {path}")
        for note in choice.notes:
            print(note, file=sys.stderr)
        print("Next: convox apps create, then convox deploy")


def detect(directory: Path) -> str:
    """The kind of app in ``directory``; an InitError when it is none of them."""
    python = any((directory / name).is_file() for name in ("requirements.txt", "pyproject.toml", "Pipfile", "setup.py"))
    python = python or any(directory.glob("*.py"))
    if (directory / "go.mod").is_file():
        return "go"
    if (directory / "Gemfile").is_file():
        return "ruby"
    # a Python app with a package.json for its front-end tooling is still a Python app
    if (directory / "package.json").is_file() and (not python or "start" in _scripts(_package_json(directory))):
        return "node"
    if python:
        return "python"
    if (directory / "index.html").is_file():
        return "static"
    raise InitError(
        f"cannot tell what kind of app is in {directory}: none of requirements.txt, pyproject.toml, *.py, "
        f"package.json, Gemfile, go.mod or index.html is there (or choose with --type {'|'.join(KINDS)})"
    )


def make_plan(directory: Path, kind: str, offline: bool = False) -> Plan:
    """What to write for an app of ``kind``; ``offline``: from its offline base (Python and Node have one)."""
    if offline:
        from cli.init_base import offline_image

        image = offline_image(kind)
        if image is None:
            raise InitError(f"there is no offline base for {kind} apps")
        return _python(directory, image) if kind == "python" else _node(directory, image)
    planners = {"python": _python, "node": _node, "ruby": _ruby, "go": _go, "static": _static}
    return planners[kind](directory)


def convox_yml(port: int) -> str:
    return (
        "services:\n"
        "  web:\n"
        "    build: .\n"
        f"    port: {port}\n"
        "    health: /\n"
        "    scale:\n"
        "      count: 1\n"
        "      memory: 256\n"
    )


# -- what the app runs ------------------------------------------------------------------------------------------


def _procfile_web(directory: Path) -> str | None:
    """The ``web:`` command of a Heroku-style Procfile, if there is one."""
    procfile = directory / "Procfile"
    if not procfile.is_file():
        return None
    for line in procfile.read_text(errors="replace").splitlines():
        match = re.match(r"^\s*web\s*:\s*(\S.*)$", line)
        if match:
            return match.group(1).strip()
    return None


def _cmd(command: str | list[str]) -> str:
    """A CMD line whose process gets the signals: a list is exec form, a shell command is ``exec``ed."""
    if isinstance(command, list):
        return "CMD " + json.dumps(command)
    return f"CMD exec {command}"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _dockerfile(*lines: str) -> str:
    return "\n".join(lines).strip("\n") + "\n"


# -- Python -----------------------------------------------------------------------------------------------------

_PY_ENTRIES = ("app.py", "main.py", "server.py", "wsgi.py", "application.py", "asgi.py")


def _python(directory: Path, base: str = "python:3.12-slim") -> Plan:
    """``base``: the official image, or the offline one, which has ``python`` and ``pip`` (in a venv) too."""
    requirements = _read(directory / "requirements.txt")
    pyproject = _read(directory / "pyproject.toml")
    dependencies = (requirements + "\n" + pyproject + "\n" + _read(directory / "Pipfile")).lower()
    if requirements:
        install = [
            "COPY requirements.txt ./",
            "RUN pip install --no-cache-dir -r requirements.txt",
            "COPY . .",
        ]
    elif (directory / "Pipfile").is_file():
        install = ["RUN pip install --no-cache-dir pipenv", "COPY . .", "RUN pipenv install --system --deploy"]
    elif pyproject:
        install = ["COPY . .", "RUN pip install --no-cache-dir ."]
    else:
        install = ["COPY . ."]
    command = _python_command(directory, dependencies, pyproject)
    return Plan(
        "python",
        _dockerfile(
            f"FROM {base}",
            f"ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT={PORT}",
            "WORKDIR /app",
            *install,
            f"EXPOSE {PORT}",
            _cmd(command),
        ),
        ignore=["__pycache__", "*.pyc", ".venv", "venv", ".pytest_cache", ".mypy_cache"],
    )


def _python_command(directory: Path, dependencies: str, pyproject: str) -> str | list[str]:
    web = _procfile_web(directory)
    if web:
        return web
    if (directory / "manage.py").is_file():  # Django
        wsgi = sorted(directory.glob("*/wsgi.py"))
        if wsgi and "gunicorn" in dependencies:
            return f"gunicorn {wsgi[0].parent.name}.wsgi --bind 0.0.0.0:$PORT"
        return "python manage.py runserver 0.0.0.0:$PORT"
    sources = sorted(path.name for path in directory.glob("*.py"))
    entries = [name for name in _PY_ENTRIES if name in sources] or (sources if len(sources) == 1 else [])
    if entries:
        entry = entries[0]
        module = entry.removesuffix(".py")
        source = _read(directory / entry)
        made = re.search(r"^(\w+)\s*=\s*(FastAPI|Starlette|Flask)\(", source, re.MULTILINE)
        if made and made.group(2) in ("FastAPI", "Starlette") and "uvicorn" in dependencies:
            return f"uvicorn {module}:{made.group(1)} --host 0.0.0.0 --port $PORT"
        if made and made.group(2) == "Flask":
            if "gunicorn" in dependencies:
                return f"gunicorn {module}:{made.group(1)} --bind 0.0.0.0:$PORT"
            return f"flask --app {module}:{made.group(1)} run --host 0.0.0.0 --port $PORT"
        return ["python", entry]
    scripts = _pyproject_scripts(pyproject)
    if scripts:
        return [scripts[0]]
    raise InitError(
        f"cannot tell how to start the Python app in {directory}: add a Procfile with a web: line, "
        f"or one of {', '.join(_PY_ENTRIES)}"
    )


def _pyproject_scripts(text: str) -> list[str]:
    if not text:
        return []
    import tomllib

    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InitError(f"pyproject.toml: not valid TOML: {exc}") from None
    scripts = data.get("project", {}).get("scripts", {})
    return list(scripts) if isinstance(scripts, dict) else []


# -- Node -------------------------------------------------------------------------------------------------------


def _package_json(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read(directory / "package.json") or "{}")
    except json.JSONDecodeError as exc:
        raise InitError(f"{directory / 'package.json'}: not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _scripts(package: dict[str, Any]) -> dict[str, str]:
    scripts = package.get("scripts")
    return {str(k): str(v) for k, v in scripts.items()} if isinstance(scripts, dict) else {}


def _node(directory: Path, base: str = "node:20-slim") -> Plan:
    package = _package_json(directory)
    scripts = _scripts(package)
    start = scripts.get("start", "").strip()
    command: list[str]
    if start:
        plain = re.fullmatch(r"node\s+([\w./-]+)", start)
        # node itself as the process gets the signals; npm would sit between it and them
        command = ["node", plain.group(1)] if plain else ["npm", "start"]
    else:
        main = package.get("main") if isinstance(package.get("main"), str) else None
        candidates = [main] if main else ["server.js", "index.js", "app.js"]
        found = [name for name in candidates if name and (directory / name).is_file()]
        if not found:
            raise InitError(
                f'{directory / "package.json"} has no "start" script: add one, '
                'such as "scripts": {"start": "node server.js"}'
            )
        command = ["node", found[0]]
    build = "build" in scripts
    if (directory / "yarn.lock").is_file():
        copy = "COPY package.json yarn.lock ./"
        install = "RUN yarn install --frozen-lockfile" + ("" if build else " --production")
        compile_ = ["RUN yarn build"] if build else []
    else:
        locked = (directory / "package-lock.json").is_file() or (directory / "npm-shrinkwrap.json").is_file()
        npm = "npm ci" if locked else "npm install"
        copy = "COPY package*.json ./"
        install = f"RUN {npm}" if build else f"RUN {npm} --omit=dev"
        compile_ = ["RUN npm run build && npm prune --omit=dev"] if build else []
    return Plan(
        "node",
        _dockerfile(
            f"FROM {base}",
            f"ENV NODE_ENV=production PORT={PORT}",
            "WORKDIR /app",
            copy,
            install,
            "COPY . .",
            *compile_,
            f"EXPOSE {PORT}",
            _cmd(command),
        ),
        ignore=["node_modules", "npm-debug.log"],
    )


# -- Ruby -------------------------------------------------------------------------------------------------------


def _ruby(directory: Path) -> Plan:
    gems = (_read(directory / "Gemfile") + _read(directory / "Gemfile.lock")).lower()
    web = _procfile_web(directory)
    command: str | list[str]
    if web:
        command = web
    elif (directory / "config" / "application.rb").is_file():
        command = "bundle exec rails server -b 0.0.0.0 -p $PORT"
    elif (directory / "config.ru").is_file() and "puma" in gems:
        command = "bundle exec puma -b tcp://0.0.0.0:$PORT"
    elif (directory / "config.ru").is_file():
        command = "bundle exec rackup -o 0.0.0.0 -p $PORT"
    else:
        scripts = [name for name in ("app.rb", "server.rb", "main.rb") if (directory / name).is_file()]
        if not scripts:
            raise InitError(
                f"cannot tell how to start the Ruby app in {directory}: add a Procfile with a web: line, "
                "a config.ru, or an app.rb"
            )
        command = f"bundle exec ruby {scripts[0]} -o 0.0.0.0 -p $PORT"
    lock = " Gemfile.lock" if (directory / "Gemfile.lock").is_file() else ""
    return Plan(
        "ruby",
        _dockerfile(
            "FROM ruby:3.3-slim",
            "RUN apt-get update && apt-get install -y --no-install-recommends build-essential \\",
            "    && rm -rf /var/lib/apt/lists/*",
            f"ENV RACK_ENV=production BUNDLE_WITHOUT=development:test PORT={PORT}",
            "WORKDIR /app",
            f"COPY Gemfile{lock} ./",
            "RUN bundle install",
            "COPY . .",
            f"EXPOSE {PORT}",
            _cmd(command),
        ),
        ignore=["log", "tmp", ".bundle"],
    )


# -- Go ---------------------------------------------------------------------------------------------------------


def _go(directory: Path) -> Plan:
    gomod = _read(directory / "go.mod")
    version = "1.22"
    declared = re.search(r"^go\s+(\d+)\.(\d+)", gomod, re.MULTILINE)
    if declared and (int(declared.group(1)), int(declared.group(2))) > (1, 22):
        version = f"{declared.group(1)}.{declared.group(2)}"  # the toolchain the module asks for
    package = _go_main_package(directory, gomod)
    go_sum = " go.sum" if (directory / "go.sum").is_file() else ""
    return Plan(
        "go",
        _dockerfile(
            f"FROM golang:{version} AS build",
            "WORKDIR /src",
            f"COPY go.mod{go_sum} ./",
            "RUN go mod download",
            "COPY . .",
            f'RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/app {package}',
            "",
            "FROM gcr.io/distroless/static-debian12",
            "COPY --from=build /out/app /app",
            f"ENV PORT={PORT}",
            f"EXPOSE {PORT}",
            "USER nonroot:nonroot",
            'ENTRYPOINT ["/app"]',
        ),
        ignore=["bin", "vendor"] if not (directory / "vendor" / "modules.txt").is_file() else ["bin"],
    )


def _is_main(path: Path) -> bool:
    return re.search(r"^package\s+main\b", _read(path), re.MULTILINE) is not None


def _go_main_package(directory: Path, gomod: str) -> str:
    if any(_is_main(path) for path in directory.glob("*.go")):
        return "."
    commands = sorted(path.parent for path in directory.glob("cmd/*/*.go") if _is_main(path))
    commands = list(dict.fromkeys(commands))
    module = re.search(r"^module\s+(\S+)", gomod, re.MULTILINE)
    named = [path for path in commands if module and path.name == module.group(1).rsplit("/", 1)[-1]]
    if len(commands) == 1 or named:
        return f"./cmd/{(named or commands)[0].name}"
    if commands:
        raise InitError(
            f"{directory} has several commands ({', '.join(f'cmd/{path.name}' for path in commands)}): "
            "write the Dockerfile's go build line by hand"
        )
    raise InitError(f"no package main in {directory} or under {directory / 'cmd'}")


# -- static site ------------------------------------------------------------------------------------------------


def _static(directory: Path) -> Plan:
    return Plan(
        "static",
        _dockerfile(
            "FROM nginx:1.27-alpine",
            "COPY . /usr/share/nginx/html",
            "EXPOSE 80",
        ),
        port=80,
        ignore=["Dockerfile", ".dockerignore", "convox.yml", "docker-compose.yml"],
    )
