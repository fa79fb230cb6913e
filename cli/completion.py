"""Shell completion of what lives on the rack: app names and an app's process types.

Typer asks these while the user presses Tab (`convox --install-completion` sets bash or zsh up); they answer
quickly or with nothing: a rack that is down or slow never makes the shell hang or print an error.
"""

from __future__ import annotations

from typing import Any

from cli.answers import expect_list
from cli.errors import CliError
from shared.protocol import App, Formation

TIMEOUT = 2.0


def _get(path: str) -> object:
    import httpx

    from cli.config import current_rack

    try:
        rack = current_rack()
        context = rack.ssl_context()  # the pinned certificate, as every other command trusts it
        verify = True if context is None else context
        auth = ("convox", rack.password)
        transport = rack.transport()
        with httpx.Client(
            base_url=rack.base_url, auth=auth, timeout=TIMEOUT, verify=verify, transport=transport
        ) as client:
            response = client.get(path)
    except Exception:  # no login, the rack unreachable: nothing to offer
        return None
    return response.json() if response.status_code == 200 else None


def app_names(incomplete: str) -> list[str]:
    """The rack's apps starting with ``incomplete``."""
    try:
        apps = expect_list(App, _get("/apps"), "/apps")
    except CliError:
        return []
    return [a["name"] for a in apps if a["name"].startswith(incomplete)]


def process_types(ctx: Any, incomplete: str) -> list[str]:
    """The process types of the app the command line names (``--app``, else the directory's app)."""
    from urllib.parse import quote

    from cli.config import resolve_app

    try:
        app = resolve_app(ctx.params.get("app_opt"))
    except Exception:
        return []
    path = f"/apps/{quote(app)}/formation"
    try:
        formation = expect_list(Formation, _get(path), path)
    except CliError:
        return []
    return [f["name"] for f in formation if f["name"].startswith(incomplete)]
