"""A throwaway rack for cases that need one: `convox rack start` on a free port with a fresh data
directory and a known password, ready once ``GET /check`` answers 200, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


class RackFailed(RuntimeError):
    pass


@dataclass
class Rack:
    url: str
    password: str
    data_dir: Path
    config_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def local_url(self) -> str:
        """The rack's own unix socket: what the CLI on the rack's machine uses, as the Docker CLI uses
        ``/var/run/docker.sock`` (plain HTTP, streams handed straight to the services)."""
        return f"unix://{self.data_dir / 'rack.sock'}"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for `convox` commands aimed at this rack over its unix socket (as the Docker CLI
        side by side talks to its engine's), with its own (empty) CLI config so that nothing under
        ``~/.convox`` is read or written."""
        env = dict(os.environ if base is None else base)
        env.update(CONVOX_HOST=self.local_url, CONVOX_PASSWORD=self.password, CONVOX_CONFIG=str(self.config_dir))
        env["CONVOX_CERT"] = str(self.data_dir / "tls" / "cert.pem")  # the rack's own certificate, as a pin
        return env

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if the rack has not stopped within ``timeout`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check(url: str, cert: Path) -> bool:
    if not cert.exists():
        return False
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    try:
        with urllib.request.urlopen(f"{url}/check", timeout=1.0, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def throwaway_rack(convox: Path, *, name: str | None = None, start_timeout: float = 60.0) -> Iterator[Rack]:
    """Start a rack, yield it once ``/check`` answers 200, stop it and delete its directory on exit.

    ``name`` sets ``RACK_NAME`` (the label on the containers the rack starts), so that a benchmark's
    containers are kept apart from those of a rack already running on this machine.
    """
    work = Path(tempfile.mkdtemp(prefix="convox-bench-"))
    data_dir, config_dir, log_path = work / "data", work / "config", work / "rack.log"
    port = free_port()
    password = secrets.token_urlsafe(16)
    env = dict(os.environ, CONVOX_PASSWORD=password)
    if name:
        env["RACK_NAME"] = name
    argv = [str(convox), "rack", "start", "--port", str(port), "--data-dir", str(data_dir)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    rack = Rack(f"https://127.0.0.1:{port}", password, data_dir, config_dir, log_path, process)
    try:
        deadline = time.monotonic() + start_timeout
        while not _check(rack.url, data_dir / "tls" / "cert.pem"):
            if process.poll() is not None:
                raise RackFailed(f"`convox rack start` exited {process.returncode}:\n{rack.log_tail()}")
            if time.monotonic() > deadline:
                raise RackFailed(f"no 200 from /check within {start_timeout:.0f}s:\n{rack.log_tail()}")
            time.sleep(0.1)
        yield rack
    finally:
        rack.stop()
        shutil.rmtree(work, ignore_errors=True)
