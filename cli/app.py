"""The `convox` commands (Typer), talking to the gateway only."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import output
from cli.client import Client
from cli.config import current_rack, normalize_host, resolve_app, save_login
from cli.errors import CliError

app = typer.Typer(
    name="convox",
    help="Deploy and run apps on a Rack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
apps_app = typer.Typer(help="List and manage apps.", invoke_without_command=True)
rack_app = typer.Typer(help="Show, start and manage the rack.", invoke_without_command=True)
api_app = typer.Typer(help="Call the rack's API directly.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")
app.add_typer(rack_app, name="rack")
app.add_typer(api_app, name="api")

AppOption = Annotated[
    str | None, typer.Option("--app", "-a", help="App name (default: .convox/app, then the directory's name).")
]


def client() -> Client:
    return Client(current_rack())


@app.command()
def login(
    host: Annotated[str, typer.Argument(help="The rack: host:port or a URL.")],
    password: Annotated[str, typer.Option("--password", "-p", prompt=True, hide_input=True, help="The rack password.")],
) -> None:
    """Log in to a rack and remember it (under ~/.convox or $CONVOX_CONFIG)."""
    from cli.config import Rack

    rack = Rack(normalize_host(host), password)
    with Client(rack) as c:
        c.get("/system")
    save_login(rack.host, password)
    print(f"Logged in to {rack.host}")


@apps_app.callback()
def apps_list(ctx: typer.Context) -> None:
    """List apps."""
    if ctx.invoked_subcommand is not None:
        return
    with client() as c:
        apps = c.get("/apps")
    output.table(["app", "status", "release"], [(a["name"], a["status"], a["release"]) for a in apps])


@apps_app.command("create")
def apps_create(
    name: Annotated[str | None, typer.Argument(help="The new app's name.")] = None, app_opt: AppOption = None
) -> None:
    """Create an app."""
    name = name or resolve_app(app_opt)
    with client() as c, output.step(f"Creating app {name}"):
        c.post("/apps", json={"name": name})


@apps_app.command("info")
def apps_info(name: Annotated[str | None, typer.Argument(help="The app.")] = None, app_opt: AppOption = None) -> None:
    """Show an app."""
    name = name or resolve_app(app_opt)
    with client() as c:
        data = c.get(f"/apps/{name}")
    output.info(
        [
            ("Name", data["name"]),
            ("Status", data["status"]),
            ("Release", data["release"]),
            ("Balancer", data["balancer"]),
        ]
    )


@apps_app.command("delete")
def apps_delete(name: Annotated[str | None, typer.Argument(help="The app.")] = None, app_opt: AppOption = None) -> None:
    """Delete an app with its processes."""
    name = name or resolve_app(app_opt)
    with client() as c, output.step(f"Deleting {name}"):
        c.delete(f"/apps/{name}")


@rack_app.callback()
def rack_info(ctx: typer.Context) -> None:
    """Show the rack."""
    if ctx.invoked_subcommand is not None:
        return
    rack = current_rack()
    with Client(rack) as c:
        data = c.get("/system")
    output.info(
        [
            ("Name", data["name"]),
            ("Provider", data["provider"]),
            ("Status", data["status"]),
            ("Version", data["version"]),
            ("Host", rack.host),
        ]
    )


@rack_app.command("start")
def rack_start(
    host: Annotated[str, typer.Option(help="Address the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the gateway listens on.")] = 5443,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where the rack keeps its state.")] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="local (Docker Engine) or aws; RACK_PROVIDER, else local.")
    ] = None,
) -> None:
    """Run the rack in the foreground: the gateway and its five services, supervised. Ctrl-C stops it."""
    import asyncio
    import os

    if provider is not None:
        from shared.provider.registry import PROVIDERS

        if provider not in PROVIDERS:
            raise CliError(f"unknown provider: {provider} (known: {', '.join(PROVIDERS)})")
        os.environ["RACK_PROVIDER"] = provider  # the services read it from the environment they inherit

    from services.supervisor import Supervisor, ensure_password
    from shared.config import RackSettings

    settings = RackSettings(data_dir=data_dir) if data_dir else RackSettings()
    directory = settings.data_dir.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    password, generated = ensure_password(directory, os.environ.get("CONVOX_PASSWORD"))
    supervisor = Supervisor(directory, host, port, rack=settings.name)

    def banner() -> None:
        shown = password if generated else f'"$(cat {directory / "password"})"'
        print(f"\nRack {settings.name} is running at {supervisor.url}", file=sys.stderr)
        if generated:
            print("The rack password was generated and is shown only this once.", file=sys.stderr)
        print(f"Log in with:  convox login {supervisor.url} --password {shown}\n", file=sys.stderr, flush=True)

    code = asyncio.run(supervisor.run(on_ready=banner))
    if code:
        raise CliError("the rack failed to start (see the lines above)")


@api_app.command("get")
def api_get(path: Annotated[str, typer.Argument(help="An API path, such as /apps.")]) -> None:
    """GET a path of the API and print the JSON."""
    if not path.startswith("/"):
        path = "/" + path
    with client() as c:
        output.pretty_json(c.get(path))


def _register_commands() -> None:
    from cli import (
        cmd_builds,
        cmd_init,
        cmd_logs,
        cmd_processes,
        cmd_rack_aws,
        cmd_releases,
        cmd_services,
        cmd_timers,
    )

    for module in (cmd_builds, cmd_releases, cmd_processes, cmd_logs, cmd_init, cmd_services, cmd_rack_aws, cmd_timers):
        module.register(app)


_register_commands()


def run(argv: Sequence[str]) -> int:
    """Run a command; every failure becomes ``ERROR: ...`` on stderr and a non-zero exit, never a traceback."""
    command = typer.main.get_command(app)
    try:
        result: Any = command.main(args=list(argv), prog_name="convox", standalone_mode=False)
    except CliError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("ERROR: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors: unknown command, missing argument, bad value
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"ERROR: {message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: a message, never a traceback with locals
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0
