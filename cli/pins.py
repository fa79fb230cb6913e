"""Pinned rack certificates: `convox login` trusts a rack's certificate on first use and keeps it per host
(``<config>/certs/<host>_<port>.pem``, mode 0600); every later HTTPS request and stream trusts that certificate
and nothing else. ``CONVOX_CERT`` (a PEM file) is trusted instead, for CI and scripts."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from cli.errors import CliError

CERT_ENV = "CONVOX_CERT"


def pin_path(config: Path, host: str) -> Path:
    parts = urlsplit(host)
    name = (parts.hostname or "rack").replace(":", "_")
    return config / "certs" / f"{name}_{parts.port or 443}.pem"


def context_for(config: Path, host: str) -> ssl.SSLContext | None:
    """The context that trusts ``host``'s pinned certificate (``None`` for plain HTTP); no pin is an error."""
    if not host.startswith("https://"):
        return None
    from shared.tls import pinned_context

    given = os.environ.get(CERT_ENV)
    if given:
        try:
            return pinned_context(given)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"{CERT_ENV}={given} is not a readable PEM certificate: {exc}") from None
    path = pin_path(config, host)
    if not path.exists():
        raise CliError(f"no pinned certificate for {host}: run `convox login {host}` to trust it")
    return pinned_context(path)


def fetch_certificate(host: str, timeout: float = 10.0) -> str:
    """The PEM certificate ``host`` presents, unverified (the first use of trust on first use)."""
    parts = urlsplit(host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((parts.hostname or "", parts.port or 443), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise CliError(f"rack at {host} does not speak TLS ({exc.reason}); for a plain HTTP rack use http://") from None
    except OSError as exc:
        raise CliError(f"rack unreachable at {host}: {exc.strerror or exc}") from None
    if not der:
        raise CliError(f"rack at {host} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der)


def save_pin(config: Path, host: str, pem: str) -> Path:
    path = pin_path(config, host)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pem)
    os.replace(tmp, path)
    return path


def is_certificate_error(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
    return "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError)
