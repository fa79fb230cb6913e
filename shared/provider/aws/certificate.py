"""The rack balancer's first TLS certificate: self-signed, made at install and imported into ACM.

The CLI pins it (it is saved with the login), so the connection is authenticated without a public CA;
a user with a domain replaces it by setting the stack's ``CertificateArn`` to an ACM certificate of theirs.
"""

from __future__ import annotations

import datetime

from shared.models import Model


class SelfSigned(Model):
    certificate: str
    """PEM."""
    key: str
    """PEM (PKCS#8, unencrypted): goes to ACM and nowhere else."""


def self_signed(common_name: str, days: int = 3650) -> SelfSigned:
    """An EC P-256 certificate for ``common_name`` (CPU work: call it in a thread)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.elb.amazonaws.com")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return SelfSigned(
        certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )
