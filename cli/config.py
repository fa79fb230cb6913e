"""Where the CLI keeps credentials (`~/.convox` or ``$CONVOX_CONFIG``, files mode 0600) and how it finds
the rack and the app."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cli.errors import CliError

if TYPE_CHECKING:
    import ssl

    import httpx


def config_dir() -> Path:
    return Path(os.environ.get("CONVOX_CONFIG") or Path.home() / ".convox")


UNIX = "unix://"


def normalize_host(host: str) -> str:
    """``127.0.0.1:5443`` or ``https://127.0.0.1:5443/`` -> ``https://127.0.0.1:5443`` (HTTPS unless the URL
    says ``http://``); ``unix:///path/rack.sock``, the rack's own socket on this machine, as it is."""
    host = host.strip()
    if host.startswith(UNIX):
        path = host[len(UNIX) :]
        if not path.startswith("/") or "\x00" in path:
            raise CliError(f"invalid host: {host} (a unix socket's path is absolute: unix:///path/to/rack.sock)")
        return UNIX + os.path.normpath(path)
    host = host.rstrip("/")
    if not host:
        raise CliError("no host given")
    if "://" not in host:
        host = f"https://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"invalid host: {host}")
    return f"{parts.scheme}://{parts.netloc}"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _auth() -> dict[str, str]:
    path = config_dir() / "auth"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise CliError(f"{path} is not valid JSON; run convox login again") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_login(host: str, password: str) -> None:
    auth = _auth()
    auth[host] = password
    _write_private(config_dir() / "auth", json.dumps(auth, indent=2) + "\n")
    _write_private(config_dir() / "host", host + "\n")


@dataclass(frozen=True)
class Rack:
    host: str
    password: str

    @property
    def uds(self) -> str | None:
        """The path of the rack's unix socket, for a ``unix://`` host."""
        return self.host[len(UNIX) :] if self.host.startswith(UNIX) else None

    @property
    def base_url(self) -> str:
        """The URL requests are made to (over the socket, for a ``unix://`` host)."""
        return "http://rack" if self.uds else self.host

    def transport(self) -> httpx.HTTPTransport | None:
        """The HTTP transport to the rack: over its unix socket, else ``None`` (httpx's own)."""
        import httpx

        return httpx.HTTPTransport(uds=self.uds) if self.uds else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """What HTTPS to this rack trusts: its pinned certificate (see :mod:`cli.pins`); ``None`` for HTTP."""
        from cli.pins import context_for

        return context_for(config_dir(), self.host)


def current_rack() -> Rack:
    """``CONVOX_HOST`` + ``CONVOX_PASSWORD``, else what `convox login` stored."""
    env_host = os.environ.get("CONVOX_HOST")
    host_file = config_dir() / "host"
    if env_host:
        host = normalize_host(env_host)
    elif host_file.exists():
        host = host_file.read_text().strip()
    else:
        raise CliError("no rack: run `convox login HOST` or set CONVOX_HOST")
    password = os.environ.get("CONVOX_PASSWORD") or _auth().get(host)
    if not password:
        raise CliError(f"no password for {host}: run `convox login {host}`")
    return Rack(host, password)


def resolve_app(flag: str | None, directory: Path | None = None) -> str:
    """``--app``, then a ``.convox/app`` file, then the directory's name."""
    if flag:
        return flag
    directory = directory or Path.cwd()
    app_file = directory / ".convox" / "app"
    if app_file.exists():
        name = app_file.read_text().strip()
        if name:
            return name
    return directory.resolve().name
