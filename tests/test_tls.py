"""HTTPS by default: the rack's own certificate (kept, reused), pinned by `convox login` on first use; plain HTTP
only with --insecure-http; one rack per data dir; a rack password worth the name."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.tls import ensure_certificate, fingerprint, pem_fingerprint
from tests.conftest import RACK_NAME, ROOT, Cli, RunningRack, free_port, start_rack, stop_rack


def presented_certificate(url: str) -> bytes:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no CONVOX_* of the test run's own: a new user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOX_")}
    return env | {"CONVOX_CONFIG": str(tmp_path / "cfg"), "PYTHONPATH": str(ROOT)} | extra


def test_the_rack_serves_https_with_the_certificate_its_banner_names(rack: RunningRack) -> None:
    assert rack.url.startswith("https://")
    banner = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", rack.log.read_text())
    assert banner is not None
    assert fingerprint(presented_certificate(rack.url)) == banner.group(1) == pem_fingerprint(rack.cert.read_text())  # type: ignore[union-attr]
    assert httpx.get(f"{rack.url}/check", verify=rack.verify).status_code == 200
    with pytest.raises(httpx.ConnectError):  # the system's trust store does not know it
        httpx.get(f"{rack.url}/check")
    with pytest.raises(httpx.HTTPError):  # and clear text is not spoken at all
        httpx.get(rack.url.replace("https://", "http://") + "/check", timeout=5)


def test_login_pins_the_certificate_on_first_use_and_a_client_without_the_pin_is_refused(
    rack: RunningRack, tmp_path: Path
) -> None:
    user = Cli(bare_env(tmp_path), tmp_path)
    unpinned = Cli(bare_env(tmp_path, CONVOX_HOST=rack.url, CONVOX_PASSWORD=rack.password), tmp_path)("apps")
    assert unpinned.returncode != 0
    assert unpinned.stderr.startswith(f"ERROR: no pinned certificate for {rack.url}: run `convox login {rack.url}`")

    wrong = user("login", rack.host, "--fingerprint", "SHA256:" + "00:" * 31 + "00", input=rack.password + "\n")
    assert wrong.returncode != 0 and "not trusting it" in wrong.stderr
    assert not (tmp_path / "cfg" / "certs").exists()

    logged = user("login", rack.host, input=rack.password + "\n", check=True)
    expected = pem_fingerprint(rack.cert.read_text())  # type: ignore[union-attr]
    assert f"SHA-256 fingerprint {expected}" in logged.stderr
    [pin] = (tmp_path / "cfg" / "certs").iterdir()
    assert pem_fingerprint(pin.read_text()) == expected
    assert pin.stat().st_mode & 0o077 == 0
    assert rack.password not in " ".join(logged.args)
    assert user("apps", check=True).returncode == 0
    assert user("login", rack.host, "--fingerprint", expected, input=rack.password + "\n").returncode == 0

    other, _ = ensure_certificate(tmp_path / "other-rack")
    pin.write_text(other.read_text())  # the rack now presents a certificate that is not the pinned one
    refused = user("apps")
    assert refused.returncode != 0
    assert refused.stderr.startswith(f"ERROR: the certificate of {rack.url} is not the one pinned at login")


def test_the_certificate_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    cert, key = ensure_certificate(tmp_path)
    first = cert.read_bytes()
    assert ensure_certificate(tmp_path) == (cert, key)
    assert cert.read_bytes() == first
    assert key.stat().st_mode & 0o077 == 0


def test_insecure_http_serves_plain_http(tmp_path: Path, docker_engine: str) -> None:
    running = start_rack(tmp_path / "data", RACK_NAME + "-http", insecure_http=True)
    try:
        assert running.url.startswith("http://") and running.cert is None
        assert httpx.get(f"{running.url}/apps", auth=("x", running.password)).status_code == 200
        assert "WARNING: plain HTTP" in running.log.read_text()
        assert not (running.data_dir / "tls").exists()
    finally:
        stop_rack(running)


def rack_start(data_dir: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "rack", "start", "--port", str(free_port()), "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def test_a_second_start_on_a_data_dir_in_use_is_refused_at_once(tmp_path: Path, docker_engine: str) -> None:
    first = start_rack(tmp_path / "data", RACK_NAME + "-lock")
    try:
        socket_file = first.data_dir / "run" / "apps.sock"
        before = socket_file.stat().st_ino
        began = time.monotonic()
        second = rack_start(first.data_dir, bare_env(tmp_path, CONVOX_PASSWORD=first.password))
        assert time.monotonic() - began < 15
        assert second.returncode != 0
        assert f"ERROR: the data dir {first.data_dir} is in use by another rack (pid {first.process.pid})" in (
            second.stderr
        )
        assert socket_file.stat().st_ino == before
        with first.client(timeout=10) as http:
            assert http.get("/apps").status_code == 200
    finally:
        stop_rack(first)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "the rack password (CONVOX_PASSWORD) is empty"),
        ("                    ", "the rack password (CONVOX_PASSWORD) is empty"),
        ("short-password", "is too short: 14 characters, at least 16 are needed"),
    ],
)
def test_a_weak_password_is_refused_at_start(tmp_path: Path, password: str, message: str) -> None:
    result = rack_start(tmp_path / "data", bare_env(tmp_path, CONVOX_PASSWORD=password))
    assert result.returncode != 0
    assert result.stderr.startswith("ERROR: ") and message in result.stderr
    assert not (tmp_path / "data" / "password").exists()


def test_a_stored_short_password_is_refused_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "password").write_text("tiny\n")
    result = rack_start(data, bare_env(tmp_path))
    assert result.returncode != 0 and "is too short" in result.stderr
