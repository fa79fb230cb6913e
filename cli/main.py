"""The `convox` entry point. `convox --version` answers before anything heavy is imported."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: its import is ~10 ms of `convox --version`
if TYPE_CHECKING:
    from typing import NoReturn


def leave(code: int) -> NoReturn:
    """Exit at once, once stdout and stderr are flushed. A normal exit tears the interpreter down module by
    module (typer, rich, httpx, pydantic, yaml: some 900 of them), which took 0.3-0.4 s of every command's
    wall-clock time on a busy machine; a command has closed its files and connections when it returns."""
    import contextlib
    import os

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main() -> None:
    argv = sys.argv[1:]
    if argv in (["--version"], ["version"]):
        from shared import __version__

        print(f"convox {__version__}")
        return
    if argv and argv[0] == "deploy":
        from cli.deploying import fast as deploy  # without Typer: building its command tree is latency

        code = deploy(argv)
        if code is not None:
            leave(code)
    if argv and argv[0] in ("exec", "run"):
        from cli.stream import fast  # streams start without Typer, httpx and rich: their start is latency

        code = fast(argv)
        if code is not None:
            leave(code)
    from cli.app import run

    leave(run(argv))


if __name__ == "__main__":
    main()
