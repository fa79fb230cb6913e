"""The `convox` entry point. `convox --version` answers before anything heavy is imported."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv in (["--version"], ["version"]):
        from shared import __version__

        print(f"convox {__version__}")
        return
    if argv and argv[0] in ("exec", "run"):
        from cli.stream import fast  # streams start without Typer, httpx and rich: their start is latency

        code = fast(argv)
        if code is not None:
            sys.exit(code)
    from cli.app import run

    sys.exit(run(argv))


if __name__ == "__main__":
    main()
