"""The `convox` CLI against a rack started the way a user starts it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Cli, RunningRack


def test_version_prints_and_exits_zero() -> None:
    result = subprocess.run([sys.executable, "-m", "cli.main", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("convox ")


def test_version_imports_no_library() -> None:
    """`convox --version` is the CLI's start alone (issue #14's figure): typing alone was 10 ms of it."""
    script = (
        "import sys; sys.argv = ['convox', '--version']; from cli.main import main; main();"
        " print(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.splitlines()[-1].split())
    heavy = {"typing", "asyncio", "json", "websockets", "httpx", "typer", "rich", "pydantic", "yaml"}
    assert loaded & heavy == set()


def test_apps_create_list_info_delete(cli: Cli, app_name: str) -> None:
    created = cli("apps", "create", app_name, check=True)
    assert f"Creating app {app_name}... OK" in created.stderr
    listing = cli("apps", check=True).stdout.splitlines()
    assert listing[0].split() == ["APP", "STATUS", "RELEASE"]
    assert any(line.split()[:2] == [app_name, "created"] for line in listing[1:])  # not running: no release yet
    info = cli("apps", "info", app_name, check=True).stdout
    assert "Name" in info and app_name in info and "created" in info
    cli("apps", "delete", app_name, check=True)
    assert app_name not in cli("apps", check=True).stdout


def test_errors_print_error_and_exit_non_zero(cli: Cli, app_name: str) -> None:
    missing = cli("apps", "info", app_name)
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"ERROR: no such app: {app_name}"
    assert "Traceback" not in missing.stderr
    bad = cli("apps", "create", "Bad_Name")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("ERROR: invalid app name: 'Bad_Name'")
    cli("apps", "create", app_name, check=True)
    duplicate = cli("apps", "create", app_name)
    assert duplicate.returncode != 0
    assert f"ERROR: app already exists: {app_name}" in duplicate.stderr
    unknown = cli("frobnicate")
    assert unknown.returncode != 0
    assert unknown.stderr.startswith("ERROR: ")
    cli("apps", "delete", app_name, check=True)


def test_wrong_password_and_rack_down_are_errors(cli: Cli, tmp_path: Path) -> None:
    wrong = Cli({**cli.env, "CONVOX_PASSWORD": "wrong"}, cli.cwd)("apps")
    assert wrong.returncode != 0
    assert wrong.stderr.startswith("ERROR: invalid password")
    down = Cli({**cli.env, "CONVOX_HOST": "127.0.0.1:1"}, cli.cwd)("apps")
    assert down.returncode != 0
    assert down.stderr.startswith("ERROR: rack unreachable at https://127.0.0.1:1")
    nothing = Cli(
        {k: v for k, v in cli.env.items() if not k.startswith("CONVOX_HOST")}
        | {"CONVOX_CONFIG": str(tmp_path / "empty")},
        cli.cwd,
    )("apps")
    assert nothing.returncode != 0
    assert nothing.stderr.startswith("ERROR: no rack")


def test_login_stores_credentials_privately(rack: RunningRack, tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOX_")} | {"CONVOX_CONFIG": str(config)}
    user = Cli(env | {"PYTHONPATH": str(ROOT)}, tmp_path)
    refused = user("login", rack.host, input="nope-nope-nope-nope\n")
    assert refused.returncode != 0 and refused.stderr.splitlines()[-1].startswith("ERROR: invalid password")
    assert not (config / "auth").exists()
    user("login", rack.url + "/", input=rack.password + "\n", check=True)
    auth = config / "auth"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert json.loads(auth.read_text()) == {rack.url: rack.password}
    assert "Provider" in user("rack", check=True).stdout
    user("login", rack.host, input=rack.password + "\n", check=True)
    assert json.loads(auth.read_text()) == {rack.url: rack.password}


def test_login_to_the_racks_own_socket_needs_no_certificate_and_its_errors_are_clear(
    rack: RunningRack, tmp_path: Path
) -> None:
    config = tmp_path / "cfg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOX_")} | {"CONVOX_CONFIG": str(config)}
    user = Cli(env | {"PYTHONPATH": str(ROOT)}, tmp_path)
    refused = user("login", rack.local_url, input="nope-nope-nope-nope\n")
    assert refused.returncode != 0 and refused.stderr.splitlines()[-1].startswith("ERROR: invalid password")
    user("login", rack.local_url, input=rack.password + "\n", check=True)
    assert json.loads((config / "auth").read_text()) == {rack.local_url: rack.password}
    assert not (config / "certs").exists()  # nothing to pin: the socket is the rack's own, mode 0600
    assert "Provider" in user("rack", check=True).stdout
    relative = user("login", "unix://rack.sock", input=rack.password + "\n")
    assert relative.returncode != 0 and "a unix socket's path is absolute" in relative.stderr
    gone = Cli(user.env | {"CONVOX_HOST": f"unix://{tmp_path}/none.sock", "CONVOX_PASSWORD": "x"}, tmp_path)("apps")
    assert gone.returncode != 0
    assert gone.stderr.startswith(f"ERROR: rack unreachable at unix://{tmp_path}/none.sock")


def test_app_resolves_from_flag_then_file_then_directory(cli: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "dir-app"
    directory.mkdir()
    here = Cli(cli.env, directory)
    here("apps", "create", check=True)
    assert here("apps", "info", check=True).stdout.split()[1] == "dir-app"
    (directory / ".convox").mkdir()
    (directory / ".convox" / "app").write_text("file-app\n")
    here("apps", "create", check=True)
    assert "file-app" in here("apps", "info", check=True).stdout
    assert "dir-app" in here("apps", "info", "--app", "dir-app", check=True).stdout
    here("apps", "delete", "-a", "dir-app", check=True)
    here("apps", "delete", check=True)


def test_rack_shows_name_provider_status_version(cli: Cli, rack: RunningRack) -> None:
    lines = dict(line.split(None, 1) for line in cli("rack", check=True).stdout.splitlines())
    assert lines["Name"] == rack.name
    assert lines["Provider"] == "local"
    assert lines["Status"] == "running"
    assert lines["Host"] == rack.url


def test_api_get_prints_pretty_json(cli: Cli, app_name: str) -> None:
    cli("apps", "create", app_name, check=True)
    out = cli("api", "get", "/apps", check=True).stdout
    assert "\n  {" in out
    assert app_name in [a["name"] for a in json.loads(out)]
    missing = cli("api", "get", "/apps/nope-nope")
    assert missing.returncode != 0 and missing.stderr.strip() == "ERROR: no such app: nope-nope"
    cli("apps", "delete", app_name, check=True)
