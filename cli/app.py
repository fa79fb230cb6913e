"""The `convox` commands (Typer), talking to the gateway only."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import completion, output
from cli.client import Client
from cli.config import current_rack, normalize_host, resolve_app, save_login
from cli.errors import CliError
from shared.protocol import AccessToken, App, Formation, System

app = typer.Typer(
    name="convox",
    help="Deploy and run apps on a Rack.",
    no_args_is_help=True,
    add_completion=True,
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
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]


def client() -> Client:
    return Client(current_rack())


def _read_password() -> str:
    """The password for `convox login`, never from the command line (``ps`` would show it): ``CONVOX_PASSWORD``,
    else a line of stdin when it is not a terminal (``cat password | convox login HOST``), else a hidden
    prompt."""
    import os

    given = os.environ.get("CONVOX_PASSWORD")
    if given:
        return given
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CliError("no password on stdin")
        return line
    import getpass

    return getpass.getpass("Password: ")


@app.command()
def login(
    host: Annotated[str, typer.Argument(help="The rack: host:port or a URL (https:// unless it says http://).")],
    fingerprint: Annotated[
        str | None,
        typer.Option(help="The SHA-256 fingerprint the rack's banner printed: the certificate must have it."),
    ] = None,
) -> None:
    """Log in to a rack and remember it (under ~/.convox or $CONVOX_CONFIG).

    The password is read from CONVOX_PASSWORD, else from stdin, else asked for. Over HTTPS the rack's
    certificate is pinned on first use (its fingerprint is printed: compare it with the rack's banner) and
    every later command trusts that certificate only."""
    import os
    import tempfile

    from cli.config import Rack, config_dir
    from cli.pins import CERT_ENV, fetch_certificate, pin_path, save_pin
    from shared.tls import pem_fingerprint

    rack = Rack(normalize_host(host), _read_password())
    pem = None
    if rack.host.startswith("https://") and not os.environ.get(CERT_ENV):
        pem = fetch_certificate(rack.host)
        seen = pem_fingerprint(pem)
        wanted = fingerprint.strip().upper() if fingerprint else None
        if wanted is not None and wanted.removeprefix("SHA256:") != seen:
            raise CliError(f"the certificate of {rack.host} has fingerprint {seen}, not {wanted}: not trusting it")
        pinned = pin_path(config_dir(), rack.host)
        if pinned.exists() and pem_fingerprint(pinned.read_text()) != seen:
            print(f"WARNING: the certificate of {rack.host} changed since the last login", file=sys.stderr)
        print(f"Certificate of {rack.host}: SHA-256 fingerprint {seen}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as scratch:  # check the password against this very certificate
            save_pin(Path(scratch), rack.host, pem)
            os.environ[CERT_ENV] = str(pin_path(Path(scratch), rack.host))
            try:
                with Client(rack) as c:
                    c.get("/system", System)
            finally:
                del os.environ[CERT_ENV]
        save_pin(config_dir(), rack.host, pem)
    else:
        with Client(rack) as c:
            c.get("/system", System)
    save_login(rack.host, rack.password)
    print(f"Logged in to {rack.host}")


@apps_app.callback()
def apps_list(ctx: typer.Context) -> None:
    """List apps."""
    if ctx.invoked_subcommand is not None:
        return
    with client() as c:
        apps = c.get_list("/apps", App)
    output.table(["app", "status", "release"], [(a["name"], a["status"], a["release"]) for a in apps])


@apps_app.command("create")
def apps_create(
    name: Annotated[str | None, typer.Argument(help="The new app's name.")] = None, app_opt: AppOption = None
) -> None:
    """Create an app."""
    name = name or resolve_app(app_opt)
    with client() as c, output.step(f"Creating app {name}"):
        c.send("POST", "/apps", json={"name": name})


@apps_app.command("info")
def apps_info(name: Annotated[str | None, typer.Argument(help="The app.")] = None, app_opt: AppOption = None) -> None:
    """Show an app."""
    name = name or resolve_app(app_opt)
    with client() as c:
        data = c.get(f"/apps/{name}", App)
        formation: list[Formation] = []
        if data["release"]:
            with contextlib.suppress(CliError):  # a release the rack cannot read: the app's own record still shows
                formation = c.get_list(f"/apps/{name}/formation", Formation)
    endpoints = [e for f in formation for e in f["endpoints"]]
    certificates = sorted({f["certificate"] for f in formation if f["certificate"]})
    output.info(
        [
            ("Name", data["name"]),
            ("Status", data["status"]),
            ("Release", data["release"]),
            ("Balancer", data["balancer"]),
            *([("Endpoints", " ".join(endpoints))] if endpoints[1:] else []),
            *[("Certificate", fingerprint) for fingerprint in certificates],
            *(
                [("Failed", f"{data['failed_release']} ({data['failure'] or 'failed'})")]
                if data["failed_release"]
                else []
            ),
        ]
    )


@apps_app.command("cancel")
def apps_cancel(name: Annotated[str | None, typer.Argument(help="The app.")] = None, app_opt: AppOption = None) -> None:
    """Cancel the roll-out in progress; the release that was serving goes on serving."""
    name = name or resolve_app(app_opt)
    with Client(current_rack(), timeout=120) as c, output.step(f"Cancelling the roll-out of {name}"):
        data = c.post(f"/apps/{name}/cancel", App)
    print(f"Release: {data['release'] or 'none'} is serving")


@app.command("restart")
def restart(
    service: Annotated[
        str | None, typer.Argument(help="Only this process type.", autocompletion=completion.process_types)
    ] = None,
    app_opt: AppOption = None,
) -> None:
    """Restart the app's processes (of one process type), rolling: no request is refused meanwhile."""
    name = resolve_app(app_opt)
    params = {"service": service} if service else {}
    with Client(current_rack(), timeout=600) as c, output.step(f"Restarting {service or 'every process type'}"):
        c.send("POST", f"/apps/{name}/restart", params=params)


@apps_app.command("delete")
def apps_delete(name: Annotated[str | None, typer.Argument(help="The app.")] = None, app_opt: AppOption = None) -> None:
    """Delete an app with its processes."""
    name = name or resolve_app(app_opt)
    with client() as c, output.step(f"Deleting {name}"):
        c.send("DELETE", f"/apps/{name}")


@rack_app.callback()
def rack_info(ctx: typer.Context) -> None:
    """Show the rack."""
    if ctx.invoked_subcommand is not None:
        return
    rack = current_rack()
    with Client(rack) as c:
        data = c.get("/system", System)
    output.info(
        [
            ("Name", data["name"]),
            ("Provider", data["provider"]),
            ("Status", data["status"]),
            ("Version", data["version"]),
            ("Host", rack.host),
        ]
    )


@rack_app.command("access")
def rack_access(
    role: Annotated[str, typer.Option(help="read (look, follow logs) or write (everything but making tokens).")],
    duration: Annotated[str, typer.Option(help="How long the token is valid: 30m, 1h, 7d...")] = "1h",
) -> None:
    """Print a scoped, expiring token to use instead of the password (CONVOX_PASSWORD or `convox login`), e.g.
    for CI. Only the rack password can make one."""
    if role not in ("read", "write"):
        raise CliError(f"invalid role: {role!r} (read or write)")
    with client() as c:
        made = c.post("/system/access", AccessToken, json={"role": role, "duration": duration})
    print(made["token"])
    print(f"{made['role']} token, expires {made['expires']}", file=sys.stderr)


@rack_app.command("start")
def rack_start(
    host: Annotated[str, typer.Option(help="Address the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the gateway listens on.")] = 5443,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where the rack keeps its state.")] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="local (Docker Engine) or aws; RACK_PROVIDER, else local.")
    ] = None,
    insecure_http: Annotated[
        bool, typer.Option("--insecure-http", help="Serve plain HTTP instead of HTTPS (only for loopback dev).")
    ] = False,
    stack: Annotated[
        str | None,
        typer.Option(
            "--stack",
            help="aws: the rack stack `rack install aws` made (RACK_AWS_STACK); the rack uses its names and password.",
        ),
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            "--credentials",
            help="aws: the IAM credentials .csv to reach AWS with (default: the one `rack install aws` was given "
            "for this stack on this machine, else the standard AWS credential chain).",
        ),
    ] = None,
) -> None:
    """Run the rack in the foreground: the gateway and its five services, supervised. Ctrl-C stops it.

    It serves HTTPS with a certificate it generates at first start (kept in the data dir); `convox login`
    pins it. The password is CONVOX_PASSWORD at first start (16 characters at least) or generated; against
    an installed AWS stack (--stack) it is the one install made, and AWS is reached with the credentials .csv
    (--credentials, else install's), kept for the services in a 0600 file of the data dir while it runs."""
    import os

    if provider is not None:
        from shared.provider.registry import PROVIDERS

        if provider not in PROVIDERS:
            raise CliError(f"unknown provider: {provider} (known: {', '.join(PROVIDERS)})")
        os.environ["RACK_PROVIDER"] = provider  # the services read it from the environment they inherit
    installed = aws_credentials = None
    stack = stack or (os.environ.get("RACK_AWS_STACK") or None if os.environ.get("RACK_PROVIDER") == "aws" else None)
    if credentials is not None and not stack:
        raise CliError("--credentials is for a rack on AWS: pass --provider aws --stack NAME too")
    if stack:
        from cli.cmd_rack_aws import stack_rack

        # every name and the password from the stack, before anything starts
        installed, aws_credentials = stack_rack(stack, credentials)

    from services.supervisor import (
        DataDirLock,
        StartError,
        ensure_password,
        exec_supervisor,
        rack_socket,
        rack_url,
        write_private_atomic,
    )
    from shared.config import RackSettings

    settings = RackSettings(data_dir=data_dir) if data_dir else RackSettings()
    directory = settings.data_dir.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = DataDirLock(directory)
    credentials_file = None
    try:
        lock.acquire()
        if aws_credentials is not None:  # the .csv's key for the services: a 0600 file, not their environment
            from cli.cmd_rack_aws import use_credentials

            credentials_file = use_credentials(directory, aws_credentials)
        if installed is not None:  # the stack's password, also over one a previous start stored
            password, generated = installed.password.get_secret_value(), False
            write_private_atomic(directory / "password", password + "\n")
        else:
            password, generated = ensure_password(directory, os.environ.get("CONVOX_PASSWORD"))
    except StartError as exc:
        if credentials_file is not None:
            credentials_file.unlink(missing_ok=True)
        lock.release()
        raise CliError(str(exc)) from None
    try:
        tls = None
        fingerprint = ""
        if not insecure_http:
            from shared.tls import ensure_certificate, pem_fingerprint

            tls = ensure_certificate(directory, host)
            fingerprint = pem_fingerprint(tls[0].read_text())
        url = rack_url(host, port, tls=tls is not None)
        local = f"unix://{rack_socket(directory)}"
        lines = ["", f"Rack {settings.name} is running at {url}"]
        if fingerprint:
            lines.append(f"Its certificate's SHA-256 fingerprint: {fingerprint}")
        else:
            lines.append("WARNING: plain HTTP (--insecure-http): the password crosses the network in clear text")
        if installed is not None:
            lines.append(f"It runs against AWS stack {installed.name} ({installed.region}, {installed.status})")
            if credentials_file is not None:
                lines.append(f"It reaches AWS with the credentials .csv's key, kept in {credentials_file}")
            lines.append("The rack password is the one `convox rack install aws` printed")
        elif generated:
            lines.append(f"The rack password was generated and is shown only this once: {password}")
        else:
            lines.append(f"The rack password is in {directory / 'password'}")
        lines.append(f"Log in with:  convox login {url}   (it asks for the password)")
        lines.append(f"On this machine, faster (no TLS, streams straight to the services):  convox login {local}")
        # The rest runs as ``python -m services.supervisor`` in this same process (it does not return).
        remove = [credentials_file] if credentials_file is not None else []  # the supervisor removes it at exit
        exec_supervisor(directory, host, port, settings.name, tls, lock, "\n".join(lines) + "\n", remove=remove)
    finally:
        if credentials_file is not None:
            credentials_file.unlink(missing_ok=True)
        lock.release()


def _api_path(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _api_body(data: str | None) -> dict[str, Any]:
    """``--data``: JSON text, ``@FILE`` or ``-`` (stdin); nothing: no body."""
    import json

    if data is None:
        return {}
    if data == "-":
        text = sys.stdin.read()
    elif data.startswith("@"):
        try:
            text = Path(data[1:]).read_text()
        except OSError as exc:
            raise CliError(f"--data: cannot read {data[1:]}: {exc.strerror}") from None
    else:
        text = data
    try:
        return {"json": json.loads(text)}
    except ValueError as exc:
        raise CliError(f"--data is not JSON: {exc}") from None


def _api_call(method: str, path: str, data: str | None = None) -> None:
    with client() as c:
        result = c.request(method, _api_path(path), **_api_body(data))
    if result is not None:
        output.pretty_json(result)


PathArgument = Annotated[str, typer.Argument(help="An API path, such as /apps.")]
DataOption = Annotated[str | None, typer.Option("--data", "-d", help="The JSON body: text, @FILE, or - for stdin.")]


@api_app.command("get")
def api_get(path: PathArgument) -> None:
    """GET a path of the API and print the JSON."""
    _api_call("GET", path)


@api_app.command("post")
def api_post(path: PathArgument, data: DataOption = None) -> None:
    """POST to a path of the API (with a JSON body from --data) and print the JSON answer."""
    _api_call("POST", path, data)


@api_app.command("put")
def api_put(path: PathArgument, data: DataOption = None) -> None:
    """PUT to a path of the API (with a JSON body from --data) and print the JSON answer."""
    _api_call("PUT", path, data)


@api_app.command("delete")
def api_delete(path: PathArgument) -> None:
    """DELETE a path of the API and print the JSON answer, if any."""
    _api_call("DELETE", path)


def _register_commands() -> None:
    from cli import (
        cmd_builds,
        cmd_cp,
        cmd_init,
        cmd_logs,
        cmd_processes,
        cmd_rack_aws,
        cmd_releases,
        cmd_services,
        cmd_timers,
    )

    for module in (
        cmd_builds,
        cmd_releases,
        cmd_processes,
        cmd_cp,
        cmd_logs,
        cmd_init,
        cmd_services,
        cmd_rack_aws,
        cmd_timers,
    ):
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
