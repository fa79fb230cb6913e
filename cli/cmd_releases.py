"""`convox` commands: releases, env, scale, deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli import completion, output
from cli.client import Client
from cli.config import current_rack, resolve_app
from cli.errors import CliError
from cli.rollout import promote, wait_for_rollout
from shared.protocol import App, Formation, Release

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        help="App name (default: .convox/app, then the directory's name).",
        autocompletion=completion.app_names,
    ),
]
PromoteOption = Annotated[bool, typer.Option("--promote", help="Promote the new release at once.")]


def client() -> Client:
    return Client(current_rack(), timeout=120)


def edit_text(text: str) -> str:
    """``text`` as the user leaves it in ``$VISUAL`` / ``$EDITOR`` (vi when neither is set)."""
    import os
    import shlex
    import subprocess
    import tempfile

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="convox-env-") as directory:
        path = Path(directory) / "env"
        path.write_text(text)
        path.chmod(0o600)
        try:
            code = subprocess.call([*shlex.split(editor), str(path)])
        except OSError as exc:
            raise CliError(f"cannot start the editor {editor!r}: {exc.strerror}") from None
        if code != 0:
            raise CliError(f"the editor exited with code {code}: nothing changed")
        return path.read_text()


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and ``#`` comments skipped)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise CliError(f"line {number}: expected KEY=VALUE, got {line!r}: nothing changed")
        values[key.strip()] = value
    return values


def register(app: typer.Typer) -> None:
    releases = typer.Typer(help="List, promote and roll back releases.", invoke_without_command=True)
    env = typer.Typer(help="Show and change the app's environment.", invoke_without_command=True)
    app.add_typer(releases, name="releases")
    app.add_typer(env, name="env")

    @releases.callback()
    def releases_list(ctx: typer.Context, app_opt: AppOption = None) -> None:
        """List the app's releases, newest first."""
        if ctx.invoked_subcommand is not None:
            return
        name = resolve_app(app_opt)
        with client() as c:
            current = c.get(f"/apps/{name}", App)
            rows = c.get_list(f"/apps/{name}/releases", Release)

        def status(release: str) -> str:
            if release == current["release"]:
                return "active"
            if release == current["failed_release"]:
                return "cancelled" if current["failure"] == "cancelled" else "failed"
            return ""

        output.table(
            ["id", "status", "build", "created", "description"],
            [(r["id"], status(r["id"]), r["build"], output.ago(r["created"]), r["description"]) for r in rows],
        )

    @releases.command("info")
    def releases_info(release: str, app_opt: AppOption = None) -> None:
        """Show a release."""
        name = resolve_app(app_opt)
        with client() as c:
            r = c.get(f"/apps/{name}/releases/{release}", Release)
        output.info(
            [
                ("Id", r["id"]),
                ("Build", r["build"]),
                ("Created", r["created"]),
                ("Description", r["description"]),
                ("Env", " ".join(sorted(r["env"]))),
            ]
        )

    @releases.command("promote")
    def releases_promote(release: str, app_opt: AppOption = None) -> None:
        """Roll a release out and wait until it serves."""
        name = resolve_app(app_opt)
        with client() as c:
            promote(c, name, release)

    @releases.command("rollback")
    def releases_rollback(release: str, app_opt: AppOption = None) -> None:
        """Make a new release from an old one, promote it and wait until it serves."""
        name = resolve_app(app_opt)
        with client() as c, output.step(f"Rolling back to {release}"):
            new = c.post(f"/apps/{name}/releases/{release}/rollback", Release)
            wait_for_rollout(c, name, new["id"])
        print(f"Release: {new['id']}")

    @env.callback()
    def env_list(ctx: typer.Context, app_opt: AppOption = None) -> None:
        """Print the app's environment as KEY=VALUE lines."""
        if ctx.invoked_subcommand is not None:
            return
        name = resolve_app(app_opt)
        with client() as c:
            values = c.get_strings(f"/apps/{name}/environment")
        for key in sorted(values):
            print(f"{key}={values[key]}")

    @env.command("get")
    def env_get(key: str, app_opt: AppOption = None) -> None:
        """Print one variable's value."""
        name = resolve_app(app_opt)
        with client() as c:
            values = c.get_strings(f"/apps/{name}/environment")
        if key not in values:
            raise CliError(f"no such environment variable: {key}")
        print(values[key])

    @env.command("set")
    def env_set(
        pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs.")],
        app_opt: AppOption = None,
        promote_now: PromoteOption = False,
        replace: Annotated[bool, typer.Option("--replace", help="Replace the whole environment.")] = False,
    ) -> None:
        """Set variables: a new release, promoted with --promote."""
        values: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CliError(f"expected KEY=VALUE, got {pair!r}")
            values[key] = value
        name = resolve_app(app_opt)
        with client() as c:
            with output.step(f"Setting {', '.join(sorted(values))}"):
                release = c.post(f"/apps/{name}/environment", Release, json=values, params={"replace": replace})
            print(f"Release: {release['id']}")
            if promote_now:
                promote(c, name, release["id"])

    @env.command("edit")
    def env_edit(app_opt: AppOption = None, promote_now: PromoteOption = False) -> None:
        """Edit the environment in $EDITOR (KEY=VALUE lines): a new release when it changed, promoted with
        --promote."""
        name = resolve_app(app_opt)
        with client() as c:
            current = c.get_strings(f"/apps/{name}/environment")
            edited = parse_env(edit_text("".join(f"{key}={current[key]}\n" for key in sorted(current))))
            if edited == current:
                print("No changes")
                return
            changed = sorted(key for key in edited.keys() | current.keys() if edited.get(key) != current.get(key))
            with output.step(f"Setting {', '.join(changed)}"):
                release = c.post(f"/apps/{name}/environment", Release, json=edited, params={"replace": True})
            print(f"Release: {release['id']}")
            if promote_now:
                promote(c, name, release["id"])

    @env.command("unset")
    def env_unset(key: str, app_opt: AppOption = None, promote_now: PromoteOption = False) -> None:
        """Unset a variable: a new release, promoted with --promote."""
        name = resolve_app(app_opt)
        with client() as c:
            with output.step(f"Unsetting {key}"):
                release = c.delete(f"/apps/{name}/environment/{key}", Release)
            print(f"Release: {release['id']}")
            if promote_now:
                promote(c, name, release["id"])

    @app.command("scale")
    def scale(
        service: Annotated[
            str | None, typer.Argument(help="The process type to change.", autocompletion=completion.process_types)
        ] = None,
        count: Annotated[int | None, typer.Option("--count", help="How many processes.")] = None,
        memory: Annotated[int | None, typer.Option("--memory", help="Memory limit per process, MB.")] = None,
        app_opt: AppOption = None,
    ) -> None:
        """Show the app's process types, or change one's count and memory."""
        name = resolve_app(app_opt)
        with client() as c:
            if service is not None:
                if count is None and memory is None:
                    raise CliError("give --count and/or --memory")
                body: dict[str, Any] = {k: v for k, v in (("count", count), ("memory", memory)) if v is not None}
                with output.step(f"Scaling {service}"):
                    c.send("POST", f"/apps/{name}/formation/{service}", json=body)
            rows = c.get_list(f"/apps/{name}/formation", Formation)
        output.table(
            ["name", "count", "running", "memory", "balancer"],
            [(f["name"], f["count"], f["running"], f["memory"], f["balancer"]) for f in rows],
        )

    @app.command("deploy")
    def deploy(
        directory: Annotated[Path, typer.Argument(help="The app's source.")] = Path("."),
        app_opt: AppOption = None,
        description: Annotated[str, typer.Option("--description", "-d", help="What this deploy is.")] = "",
        manifest: Annotated[str, typer.Option("--manifest", "-m", help="Manifest path in the source.")] = "",
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Build without Docker's cache.")] = False,
    ) -> None:
        """Build the directory, promote the release and wait until it serves."""
        from cli.deploying import deploy as run_deploy

        run_deploy(directory, app_opt, description=description, manifest=manifest, no_cache=no_cache)
