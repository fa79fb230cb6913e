"""`convox` commands: backing services (`convox services ...`) and rack params (`convox rack params ...`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli import completion, output
from cli.client import Client
from cli.config import current_rack, resolve_app
from cli.errors import CliError
from shared.protocol import Resource

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]
SLOW = 660.0
"""Creating waits for the server to accept connections; linking waits for the app's roll-out."""


def client(timeout: float = 30.0) -> Client:
    return Client(current_rack(), timeout=timeout)


def wait_running(c: Client, name: str, timeout: float = SLOW, poll: float = 0.5) -> None:
    """Until the service is running; its reason when it failed (it holds nothing, and can be created again)."""
    deadline = time.monotonic() + timeout
    while True:
        data = c.get(f"/services/{name}", Resource)
        if data["status"] == "running":
            return
        if data["status"] == "failed":
            raise CliError(
                f"{name} could not be made: {data['message'] or 'no reason given'} (create it again, or "
                f"`convox services delete {name}`)"
            )
        if time.monotonic() > deadline:
            raise CliError(f"{name} is still {data['status']} after {timeout:.0f} s: see `convox services info {name}`")
        time.sleep(poll)


def register(app: typer.Typer) -> None:
    from cli.app import rack_app

    services = typer.Typer(
        help="Backing services (postgres, mysql, mariadb, redis, memcached), linked into apps as <NAME>_URL.",
        invoke_without_command=True,
    )
    params = typer.Typer(help="Show and change the rack's parameters.", invoke_without_command=True)
    app.add_typer(services, name="services")
    rack_app.add_typer(params, name="params")

    @services.callback()
    def services_list(ctx: typer.Context) -> None:
        """List backing services."""
        if ctx.invoked_subcommand is not None:
            return
        with client() as c:
            rows = c.get_list("/services", Resource)
        output.table(
            ["name", "type", "status", "apps"],
            [(r["name"], r["type"], r["status"], ", ".join(r["apps"])) for r in rows],
        )

    @services.command("proxy")
    def services_proxy(
        name: Annotated[str, typer.Argument(help="The service.")],
        port: Annotated[
            int | None, typer.Option("--port", "-p", min=0, max=65535, help="Local port (default: the type's own).")
        ] = None,
    ) -> None:
        """Listen on a local port that reaches the service through the rack (psql, mysql, redis-cli); Ctrl-C
        stops."""
        import asyncio

        from cli.cmd_proxy import DEFAULT_PORTS, serve

        rack = current_rack()
        with client() as c:
            kind = c.get(f"/services/{name}", Resource)["type"]
        try:
            asyncio.run(serve(rack, name, DEFAULT_PORTS.get(kind, 0) if port is None else port))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    @services.command("export")
    def services_export(
        name: Annotated[str, typer.Argument(help="The service.")],
        file: Annotated[Path | None, typer.Option("--file", "-f", help="Write the dump here, not to stdout.")] = None,
    ) -> None:
        """Save a dump of the service's data: postgres pg_dump SQL, mysql mysqldump SQL, redis RDB (to stdout or
        --file; a progress bar on stderr)."""
        from cli.cmd_dumps import export

        try:
            export(current_rack(), name, file)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    @services.command("import")
    def services_import(
        name: Annotated[str, typer.Argument(help="The service.")],
        file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the dump from here, not stdin.")] = None,
    ) -> None:
        """Load a dump (what export saves) into the service: postgres all or nothing, redis replaces its whole
        data set (from stdin or --file; a progress bar on stderr)."""
        from cli.cmd_dumps import import_

        try:
            import_(current_rack(), name, file)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    @services.command("create")
    def services_create(
        kind: Annotated[str, typer.Argument(metavar="TYPE", help="postgres, mysql, mariadb, redis or memcached.")],
        name: Annotated[str | None, typer.Option("--name", "-n", help="The service's name (default: TYPE).")] = None,
        no_wait: Annotated[
            bool, typer.Option("--no-wait", help="Return once it is being made (`convox services info` tells).")
        ] = False,
    ) -> None:
        """Create a backing service and wait until it accepts connections."""
        body = {"type": kind, **({"name": name} if name else {})}
        label = name or kind
        if no_wait:
            with client() as c, output.step(f"Creating {label} ({kind}) in the background"):
                c.send("POST", "/services", json=body)
            return
        with client() as c, output.waiting(f"Creating {label} ({kind})"):
            created = c.post("/services", Resource, json=body)
            wait_running(c, created["name"])

    @services.command("info")
    def services_info(
        name: Annotated[str, typer.Argument(help="The service.")],
        reveal: Annotated[bool, typer.Option("--reveal", help="Show the password in the URL.")] = False,
    ) -> None:
        """Show a backing service: type, status, linked apps and URL (password hidden unless --reveal)."""
        with client() as c:
            data = c.get(f"/services/{name}", Resource, params={"reveal": reveal})
        output.info(
            [
                ("Name", data["name"]),
                ("Type", data["type"]),
                ("Status", data["status"]),
                *([("Message", data["message"])] if data["message"] else []),
                ("Apps", ", ".join(data["apps"])),
                ("URL", data["url"]),
            ]
        )

    @services.command("delete")
    def services_delete(name: Annotated[str, typer.Argument(help="The service.")]) -> None:
        """Delete a backing service and its data (refused while linked)."""
        with client(SLOW) as c, output.step(f"Deleting {name}"):
            c.send("DELETE", f"/services/{name}")

    @services.command("link")
    def services_link(name: Annotated[str, typer.Argument(help="The service.")], app_opt: AppOption = None) -> None:
        """Link a service into an app: <NAME>_URL in its environment, rolled out."""
        target = resolve_app(app_opt)
        with client(SLOW) as c, output.step(f"Linking {name} to {target}"):
            c.send("POST", f"/services/{name}/links", json={"app": target})

    @services.command("unlink")
    def services_unlink(name: Annotated[str, typer.Argument(help="The service.")], app_opt: AppOption = None) -> None:
        """Unlink a service from an app: <NAME>_URL leaves its environment, rolled out."""
        target = resolve_app(app_opt)
        with client(SLOW) as c, output.step(f"Unlinking {name} from {target}"):
            c.send("DELETE", f"/services/{name}/links/{target}")

    @params.callback()
    def params_list(ctx: typer.Context) -> None:
        """Show the rack's parameters."""
        if ctx.invoked_subcommand is not None:
            return
        from cli import cmd_rack_aws

        host = current_rack().host
        if cmd_rack_aws.aws_record(host) is not None:  # an AWS rack: its parameters are its stack's
            values: dict[str, str] = cmd_rack_aws.params_get_aws(host)
            output.info(sorted(values.items()))
            return
        with client() as c:
            values = c.get_strings("/system/params")
        if values:
            output.info(sorted(values.items()))

    @params.command("set")
    def params_set(
        pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="Parameters; an empty value resets.")],
    ) -> None:
        """Change rack parameters, such as postgres_image=postgres:16 (on AWS: InstanceType=t3.medium)."""
        values: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CliError(f"expected KEY=VALUE, got {pair!r}")
            values[key] = value
        from cli import cmd_rack_aws

        host = current_rack().host
        if cmd_rack_aws.aws_record(host) is not None:  # an AWS rack: update its stack, showing the events
            cmd_rack_aws.params_set_aws(host, values)
            print("Parameters updated")
            return
        with client() as c, output.step("Updating parameters"):
            c.send("POST", "/system/params", json=values)
