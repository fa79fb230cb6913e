"""`convox deploy`: build the directory, promote the release and wait until it serves.

The command line is read here, without Typer (:func:`fast`): building the command tree (Typer, its Click
commands, every command module) took some 0.2 s of each deploy before anything was sent. A command line this
does not read for certain (help, an unknown option, ``-aNAME``, a value that looks like an option) goes to
Typer, whose `convox deploy` runs the same :func:`deploy`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cli.errors import CliError

VALUES = {
    "--app": "app",
    "-a": "app",
    "--description": "description",
    "-d": "description",
    "--manifest": "manifest",
    "-m": "manifest",
}
FLAGS = {"--no-cache": "no_cache"}


def deploy(
    directory: Path, app: str | None, *, description: str = "", manifest: str = "", no_cache: bool = False
) -> None:
    """Build ``directory`` into a release of the app (``app``, else the directory's) and roll it out."""
    from cli.building import build_and_wait
    from cli.client import Client
    from cli.config import current_rack, resolve_app
    from cli.rollout import promote

    name = resolve_app(app, directory)
    with Client(current_rack(), timeout=120) as c:
        build = build_and_wait(c, name, directory, description=description, manifest=manifest, no_cache=no_cache)
        promote(c, name, build["release"])


def parse(args: Sequence[str]) -> tuple[list[str], dict[str, str], set[str]] | None:
    """``args`` (after ``deploy``) as positionals, option values (the last of each) and flags; ``None`` when
    Typer should read them."""
    positionals: list[str] = []
    values: dict[str, str] = {}
    flags: set[str] = set()
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            positionals.extend(rest)
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            continue
        option, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if option in FLAGS and not eq:
            flags.add(FLAGS[option])
            continue
        name = VALUES.get(option)
        if name is None:
            return None
        if not eq:
            if not rest or rest[0].startswith("-"):
                return None
            value = rest.pop(0)
        values[name] = value
    return positionals, values, flags


def fast(argv: Sequence[str]) -> int | None:
    """Run `convox deploy ...` (``argv`` starting with ``deploy``) and return its exit code, or ``None`` to hand
    the command line to Typer. Failures are reported as the Typer commands' are (:func:`cli.app.run`)."""
    if not argv or argv[0] != "deploy" or "_CONVOX_COMPLETE" in os.environ:
        return None
    parsed = parse(argv[1:])
    if parsed is None or len(parsed[0]) > 1:
        return None
    positionals, values, flags = parsed
    try:
        deploy(
            Path(positionals[0]) if positionals else Path("."),
            values.get("app"),
            description=values.get("description", ""),
            manifest=values.get("manifest", ""),
            no_cache="no_cache" in flags,
        )
    except CliError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # as cli.app.run: a message, never a traceback with locals
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
