"""`convox rack install aws`, `convox rack uninstall`, and `convox rack params` on an AWS rack.

These talk to AWS directly (through shared.provider.aws, which imports aioboto3 only when a command runs),
because before install and after uninstall there is no rack API to ask. The installed rack is remembered in
``~/.convox/aws.json`` (stack name, region, the credentials file's path, never a secret) next to the login;
`rack params`, `rack uninstall` and `rack start --provider aws --stack NAME` on this machine use that file
again unless given another with ``--credentials``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cli.config import _auth, _write_private, config_dir, current_rack, save_login
from cli.errors import CliError

T = TypeVar("T")

NameOption = Annotated[str, typer.Option("--name", "-n", help="The rack's name (its stack's name).")]
RegionOption = Annotated[str | None, typer.Option("--region", help="The AWS region (default: AWS_REGION).")]
CredentialsOption = Annotated[
    Path | None,
    typer.Option(
        "--credentials",
        help="The IAM credentials .csv from the AWS console (default: the standard AWS credential chain).",
    ),
]


def _records() -> dict[str, dict[str, Any]]:
    path = config_dir() / "aws.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise CliError(f"{path} is not valid JSON") from None
    return {str(k): dict(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_records(records: dict[str, dict[str, Any]]) -> None:
    _write_private(config_dir() / "aws.json", json.dumps(records, indent=2) + "\n")


def aws_record(host: str) -> dict[str, Any] | None:
    """What `rack install aws` remembered about the rack at ``host``, or None for a rack it did not install."""
    return _records().get(host)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an AWS coroutine; every AWS, credentials or stack error becomes a CLI error."""
    import asyncio  # here only: the start of every other command goes without it

    from shared.errors import RackError
    from shared.provider.aws.credentials import CredentialsError
    from shared.provider.aws.stacks import StackError

    try:
        return asyncio.run(coro)
    except (RackError, CredentialsError, StackError) as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore"):  # ClientError, NoCredentialsError...
            raise CliError(f"AWS: {exc}") from None
        raise


async def _checked(check: Callable[[], object]) -> None:
    check()


def _credentials(path: Path | None) -> Any:
    if path is None:
        return None
    from shared.provider.aws.credentials import CredentialsError, read_credentials

    try:
        return read_credentials(path.expanduser())
    except CredentialsError as exc:
        raise CliError(str(exc)) from None


def _event(event: Any) -> None:
    print(event.line(), file=sys.stderr, flush=True)


def _step(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected KEY=VALUE, got {pair!r}")
        values[key] = value
    return values


def _aws_target(host: str) -> tuple[dict[str, Any], Any]:
    record = aws_record(host)
    if record is None:
        raise CliError(f"{host} was not installed by `convox rack install aws` on this machine")
    credentials = Path(record["credentials"]) if record.get("credentials") else None
    return record, _credentials(credentials)


def params_get_aws(host: str) -> dict[str, str]:
    from shared.provider.aws.credentials import session
    from shared.provider.aws.stacks import StackParams

    record, credentials = _aws_target(host)
    params = StackParams(session(credentials, record.get("region")), record["stack"])
    return _run(params.get())


def params_set_aws(host: str, values: dict[str, str]) -> dict[str, str]:
    from shared.provider.aws.credentials import session
    from shared.provider.aws.stacks import StackParams

    record, credentials = _aws_target(host)
    params = StackParams(session(credentials, record.get("region")), record["stack"], on_event=_event)
    return _run(params.set(values))


def stack_rack(stack: str, credentials: Path | None = None) -> tuple[Any, Any]:
    """For `rack start --stack`: the installed rack's settings and password (a ``StackRack``), its settings
    exported for the rack's services (``RACK_NAME`` is the stack's name, ``RACK_PROVIDER`` aws), and the
    credentials it runs with: ``credentials`` (a .csv), else the .csv `rack install aws` was given for this
    stack on this machine, else None (the standard AWS chain). The region is AWS_REGION (or
    AWS_DEFAULT_REGION), else the one install used."""
    import os

    from shared.provider.aws.rackstack import from_stack

    if os.environ.get("RACK_PROVIDER", "aws") != "aws":
        raise CliError(f"--stack names an AWS rack stack: it needs --provider aws, not {os.environ['RACK_PROVIDER']}")
    named = os.environ.get("RACK_NAME")
    if named and named != stack:
        raise CliError(f"RACK_NAME is {named}, but the rack of stack {stack} is named {stack}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    installs = [r for r in _records().values() if r.get("stack") == stack]
    record = next((r for r in installs if region is None or r.get("region") == region), {})
    region = region or record.get("region")
    if credentials is None and record.get("credentials"):
        credentials = Path(record["credentials"])
    creds = _credentials(credentials)
    given = os.environ.get("CONVOX_PASSWORD")
    installed = _run(from_stack(stack, region, creds))
    if given and given != installed.password.get_secret_value():
        raise CliError(f"CONVOX_PASSWORD is not the password of rack {stack} (unset it: the stack's is used)")
    given_url = os.environ.get("RACK_AWS_REPORT_URL")  # builders reach this rack elsewhere than the balancer
    given_ca = os.environ.get("RACK_AWS_REPORT_CA", "")
    os.environ.update(installed.environment, RACK_PROVIDER="aws", RACK_NAME=stack)
    if given_url:  # not the balancer: its certificate is not the one there (empty: the rack's own, it serves it)
        os.environ["RACK_AWS_REPORT_URL"] = given_url
        os.environ["RACK_AWS_REPORT_CA"] = given_ca
    elif given_ca:
        os.environ["RACK_AWS_REPORT_CA"] = given_ca
    return installed, creds


CREDENTIALS_PROFILE = "convox-rack"
CHAIN_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def use_credentials(data_dir: Path, credentials: Any) -> Path:
    """Hand the rack's services a credentials .csv's key without putting it in their environment or command
    line: an AWS shared-credentials file ``<data dir>/aws-credentials`` (mode 0600, profile ``convox-rack``)
    that AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE name. Keys in the environment are dropped, so that the
    file's key is the one used. The caller removes the file when the rack stops."""
    import os

    from services.supervisor import write_private_atomic

    path = data_dir / "aws-credentials"
    secret = credentials.secret_access_key.get_secret_value()  # checked: no whitespace, no line break
    write_private_atomic(
        path,
        f"[{CREDENTIALS_PROFILE}]\naws_access_key_id = {credentials.access_key_id}\naws_secret_access_key = {secret}\n",
    )
    for variable in (*CHAIN_VARIABLES, "AWS_DEFAULT_PROFILE"):
        os.environ.pop(variable, None)
    os.environ.update(AWS_SHARED_CREDENTIALS_FILE=str(path), AWS_PROFILE=CREDENTIALS_PROFILE)
    return path


def register(app: typer.Typer) -> None:
    from cli.app import rack_app

    @rack_app.command("install")
    def rack_install(
        provider: Annotated[str, typer.Argument(metavar="PROVIDER", help="Where to install: aws.")],
        params: Annotated[
            list[str] | None,
            typer.Argument(metavar="[PARAM=VALUE...]", help="Rack parameters: Ami=, InstanceType=, InstanceCount=..."),
        ] = None,
        name: NameOption = "convox",
        region: RegionOption = None,
        credentials: CredentialsOption = None,
    ) -> None:
        """Install a rack on AWS: its CloudFormation stack, then log in to it."""
        if provider != "aws":
            raise CliError(f"unknown provider {provider!r}: `rack install` knows aws (a local rack: `rack start`)")
        values = parse_pairs(params or [])
        creds = _credentials(credentials)
        from shared.provider.aws.install import check_name, check_params, install

        _run(_checked(lambda: (check_name(name), check_params(values))))  # bad input: refused before anything
        print(f"Installing rack {name} on AWS", file=sys.stderr, flush=True)
        installed = _run(install(name, values, creds, region, _event))
        password = installed.password.get_secret_value()
        directory = config_dir() / "aws"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        certificate = directory / f"{name}.pem"
        _write_private(certificate, installed.certificate)
        records = _records()
        records[installed.url] = {
            "stack": name,
            "region": installed.region,
            "credentials": str(credentials.expanduser().resolve()) if credentials else None,
            "certificate": str(certificate),
        }
        _save_records(records)
        save_login(installed.url, password)
        print(f"\nRack {name} is installed at {installed.url}")
        print("Its password is shown only this once:")
        print(f"  {password}")
        print(f"Logged in to {installed.url} (the balancer's certificate is {certificate})")

    @rack_app.command("uninstall")
    def rack_uninstall(
        name: Annotated[str | None, typer.Argument(help="The rack (default: the current rack, if on AWS).")] = None,
        region: RegionOption = None,
        credentials: CredentialsOption = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Remove an AWS rack and everything it made: apps, services, their data, the stack."""
        records = _records()
        host = next((h for h, r in records.items() if r.get("stack") == name), None) if name else _current_host()
        record = records.get(host or "", {})
        name = name or record.get("stack")
        if not name:
            raise CliError("which rack? pass its name (`convox rack uninstall NAME`)")
        region = region or record.get("region")
        if credentials is None and record.get("credentials"):
            credentials = Path(record["credentials"])
        if not yes:
            if not sys.stdin.isatty():
                raise CliError(f"this deletes rack {name} and all its apps and data: pass --yes to confirm")
            typed = typer.prompt(f"This deletes rack {name}, its apps and their data. Type the rack's name")
            if typed != name:
                raise CliError("the name did not match; nothing was deleted")
        creds = _credentials(credentials)
        from shared.provider.aws.install import uninstall

        _run(uninstall(name, creds, region, _event, _step))
        for h in [h for h, r in records.items() if r.get("stack") == name and r.get("region") == region]:
            records.pop(h)
            _forget_login(h)
            if record.get("certificate"):
                Path(record["certificate"]).unlink(missing_ok=True)
        _save_records(records)
        print(f"Rack {name} is uninstalled")


def _current_host() -> str | None:
    try:
        return current_rack().host
    except CliError:
        return None


def _forget_login(host: str) -> None:
    auth = _auth()
    if auth.pop(host, None) is not None:
        _write_private(config_dir() / "auth", json.dumps(auth, indent=2) + "\n")
    host_file = config_dir() / "host"
    if host_file.exists() and host_file.read_text().strip() == host:
        host_file.unlink()
