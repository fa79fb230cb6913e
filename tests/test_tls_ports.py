"""Port protocols: the balancer listener of an ``https``/``tls`` port terminates TLS with a certificate the rack
made for the app (kept in its data dir, reused across restarts, gone with the app) and forwards plain TCP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shared.names import OutsideRoot
from shared.provider.local.balancer import Listener, ListenerSpec
from shared.provider.local.balancerd import BalancerDaemon
from shared.provider.local.certificates import AppCertificates
from shared.provider.local.state import State
from shared.tls import fingerprint
from tests.conftest import Cli, RunningRack


def trusting(pem: Path) -> ssl.SSLContext:
    """A client context that trusts the app's certificate only, and checks the address against it."""
    context = ssl.create_default_context(cafile=str(pem))
    context.check_hostname = True
    return context


async def test_a_tls_listener_answers_with_the_app_certificate_and_forwards_plain_bytes(tmp_path: Path) -> None:
    certificates = AppCertificates(tmp_path, "127.0.0.1", "rack")
    tls = await certificates.ensure("shop", ["http/1.1"])
    assert (await certificates.ensure("shop")).fingerprint == tls.fingerprint  # made once, then kept
    assert stat.S_IMODE(os.stat(tls.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(tls.key).parent).st_mode) == 0o700
    with pytest.raises(OutsideRoot):
        certificates.directory("..")

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"plain " + await reader.readline())  # what the container gets: the bytes, no TLS
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    listener = Listener("web.shop", "127.0.0.1", 0, tls)
    port = await listener.start()
    listener.set_backends([("127.0.0.1", int(server.sockets[0].getsockname()[1]))])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(Path(tls.certificate)))
        peer = writer.get_extra_info("ssl_object")
        assert fingerprint(peer.getpeercert(binary_form=True)) == tls.fingerprint
        assert peer.selected_alpn_protocol() in (None, "http/1.1")
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.read(), 5) == b"plain hello\n"  # ends when the backend's answer does
        writer.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that trusts another certificate refuses it
            await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context())
    finally:
        await listener.close()
        server.close()
        await server.wait_closed()
    await certificates.forget("shop")
    assert not Path(tls.key).parent.exists()
    assert await certificates.fingerprint("shop") == ""


async def served(port: int, cafile: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(Path(cafile)))
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(b"hi\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return fingerprint(der), answer


async def test_a_listener_put_again_turns_tls_on_its_port_and_takes_a_new_certificate(tmp_path: Path) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"got " + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    backends = [("127.0.0.1", int(server.sockets[0].getsockname()[1]))]
    daemon = BalancerDaemon(tmp_path / "balancer.sock", 60)
    certificates = AppCertificates(tmp_path, "127.0.0.1", "rack")
    first, second = await certificates.ensure("one"), await certificates.ensure("two")
    try:
        port = await daemon.put(ListenerSpec(name="web.one", host="127.0.0.1", backends=backends))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"plain\n")
        assert await reader.read() == b"got plain\n"
        writer.close()
        spec = ListenerSpec(name="web.one", host="127.0.0.1", port=port, backends=backends, tls=first)
        assert await daemon.put(spec) == port  # the same port, now TLS
        assert await served(port, first.certificate) == (first.fingerprint, b"got hi\n")
        assert await daemon.put(spec.model_copy(update={"port": 0, "tls": second})) == port
        assert await served(port, second.certificate) == (second.fingerprint, b"got hi\n")
        (listed,) = (await daemon.answer({"op": "list"}))["listeners"]
        assert listed["tls"]["fingerprint"] == second.fingerprint and "PRIVATE" not in str(listed)
    finally:
        await asyncio.gather(*(listener.close() for listener in daemon.listeners.values()))
        server.close()
        await server.wait_closed()


async def test_a_data_dir_from_before_tls_ports_gets_the_balancer_scheme_column(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # the formation table as racks before TLS ports made it
        db.execute(
            "CREATE TABLE formation (app TEXT NOT NULL, service TEXT NOT NULL, count INTEGER, memory INTEGER, "
            "balancer_port INTEGER, PRIMARY KEY (app, service))"
        )
        db.execute("INSERT INTO formation (app, service, balancer_port) VALUES ('shop', 'web', 4000)")
    state = State(path)
    await state.open()
    try:
        row = await state.fetch_one("SELECT balancer_port, balancer_scheme FROM formation")
        assert row is not None and (row["balancer_port"], row["balancer_scheme"]) == (4000, "")
    finally:
        await state.close()
    again = State(path)  # and a second open finds it there
    await again.open()
    await again.close()


# ---- on the rack ---------------------------------------------------------------------------------------------

GEN2 = """
services:
  web:
    image: {image}
    command: sh -c 'mkdir -p /s; echo secure > /s/index.html; exec httpd -f -p 3000 -h /s'
    port: https:3000
    scale:
      memory: 16
"""

GEN1 = """
web:
  image: {image}
  command: >-
    sh -c 'mkdir -p /a /b; echo plain > /a/index.html; echo secure > /b/index.html;
    httpd -p 3001 -h /b; exec httpd -f -p 3000 -h /a'
  ports:
    - "80:3000"
    - "443:3001"
  labels:
    convox.port.443.protocol: https
    convox.port.443.proxy: "true"
  mem_limit: 16m
"""


def get(url: str, verify: ssl.SSLContext | bool, within: float = 20) -> httpx.Response:
    """GET ``url`` until it answers (a balancer started again takes its listeners back within seconds)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return httpx.get(url, verify=verify, timeout=3)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def served_fingerprint(address: str) -> str:
    host, _, port = address.rpartition(":")
    der = ssl.get_server_certificate((host, int(port)))
    return fingerprint(ssl.PEM_cert_to_DER_cert(der))


def deploy(cli: Cli, app: str, source: Path) -> str:
    deployed = cli("deploy", str(source), "--app", app, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    return deployed.stdout + deployed.stderr


def balancer_pid(rack: RunningRack) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"balancerd --socket {rack.data_dir / 'run' / 'balancer.sock'}"], capture_output=True, text=True
    )
    (pid,) = [int(pid) for pid in found.stdout.split()]
    return pid


def test_an_https_port_answers_over_tls_with_the_app_certificate_through_a_balancer_restart(
    cli: Cli, rack: RunningRack, app_name: str, busybox_image: str, tmp_path: Path
) -> None:
    from tests.test_builds import api

    source = tmp_path / "gen2"
    source.mkdir()
    (source / "convox.yml").write_text(GEN2.format(image=busybox_image))
    cli("apps", "create", app_name, check=True)
    try:
        deploy(cli, app_name, source)
        (web,) = api(rack, "GET", f"/apps/{app_name}/formation").json()
        assert web["balancer"].startswith("https://127.0.0.1:") and web["endpoints"] == [web["balancer"]]
        assert api(rack, "GET", f"/apps/{app_name}").json()["balancer"] == web["balancer"]
        pem = rack.data_dir / "certs" / app_name / "cert.pem"
        assert fingerprint(ssl.PEM_cert_to_DER_cert(pem.read_text())) == web["certificate"]
        answer = get(web["balancer"] + "/", trusting(pem))
        assert (answer.status_code, answer.text) == (200, "secure\n")
        address = web["balancer"].removeprefix("https://")
        with pytest.raises(httpx.TransportError):  # no plain HTTP on a TLS port
            httpx.get(f"http://{address}/", timeout=3)

        os.kill(balancer_pid(rack), signal.SIGKILL)  # the rack starts it again, with the same certificate
        answer = get(web["balancer"] + "/", trusting(pem))
        assert (answer.status_code, answer.text) == (200, "secure\n")
        assert served_fingerprint(address) == web["certificate"]
        (again,) = api(rack, "GET", f"/apps/{app_name}/formation").json()
        assert (again["balancer"], again["certificate"]) == (web["balancer"], web["certificate"])
    finally:
        cli("apps", "delete", app_name)
    assert not (rack.data_dir / "certs" / app_name).exists()  # the certificate went with the app


def test_a_compose_port_labelled_https_terminates_tls_beside_a_plain_port(
    cli: Cli, rack: RunningRack, app_name: str, busybox_image: str, tmp_path: Path
) -> None:
    from tests.test_deploy import fetch, info

    source = tmp_path / "gen1"
    source.mkdir()
    (source / "docker-compose.yml").write_text(GEN1.format(image=busybox_image))
    cli("apps", "create", app_name, check=True)
    try:
        printed = deploy(cli, app_name, source)
        assert "WARNING: docker-compose.yml: web.labels.convox.port.443.proxy is not supported by this rack" in printed
        details = info(cli, app_name)
        plain = details["Balancer"]
        assert fetch(plain) == "plain\n"  # the plain port is as it was
        (secure,) = [e for e in details["Endpoints"].split() if e != plain]
        assert secure.startswith("https://127.0.0.1:")
        pem = rack.data_dir / "certs" / app_name / "cert.pem"
        digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest().upper()
        assert details["Certificate"].replace(":", "") == digest
        answer = get(secure + "/", trusting(pem))
        assert (answer.status_code, answer.text) == (200, "secure\n")
    finally:
        cli("apps", "delete", app_name)
