"""The rack's TLS certificate: generated at first start (ECDSA P-256, self-signed, ten years), kept in the data
dir (``tls/cert.pem``, ``tls/key.pem`` mode 0600) and reused across restarts. Clients pin it on first use, so
its SHA-256 fingerprint is what the banner prints."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def fingerprint(der: bytes) -> str:
    """``SHA256:AB:CD:...``: the SHA-256 of the DER certificate, as the banner prints it and login shows it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def pem_fingerprint(pem: str) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem))


def names_for(host: str) -> tuple[list[str], list[str]]:
    dns = ["localhost"]
    with contextlib.suppress(OSError):
        dns.append(socket.gethostname())
    ips = ["127.0.0.1", "::1"]
    try:
        ipaddress.ip_address(host)
        if host not in ("0.0.0.0", "::"):
            ips.append(host)
    except ValueError:
        if host:
            dns.append(host)
    return sorted(set(dns)), sorted(set(ips))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_certificate(data_dir: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """The rack's certificate and key, generated now if the data dir has none. Returns their paths."""
    directory = tls_dir(data_dir)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = self_signed("convox rack", *names_for(host))
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def self_signed(common_name: str, dns: list[str], ips: list[str], days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 server certificate for these names, and its key: ``(cert PEM, key PEM)``
    (PKCS#8, unencrypted). CPU work of a few milliseconds."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def pinned_context(cafile: Path | str) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate in ``cafile`` (a pin: no host name check, since
    the rack is reached by whatever address the user has for it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(cafile))
    return context
