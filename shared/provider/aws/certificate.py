"""The rack balancer's first TLS certificate: self-signed, made at install and imported into ACM.

The CLI pins it (it is saved with the login), so the connection is authenticated without a public CA;
a user with a domain replaces it by setting the stack's ``CertificateArn`` to an ACM certificate of theirs.
"""

from __future__ import annotations

import datetime
from typing import Any

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


# ---- the container instances' Docker Engines: mutual TLS ---------------------------------------------------

ENGINE_PORT = 2376
ENGINE_SECRETS = ("ca", "server-cert", "server-key", "client-cert", "client-key")
"""The names, under the rack's engine path in SSM (:func:`engine_path`), of its engines' TLS material."""
INSTANCE_SECRETS = ("ca", "server-cert", "server-key")
"""What an instance reads (its role may read these only): with the server key alone nobody is a client."""
RACK_SECRETS = ("ca", "client-cert", "client-key")
"""What the rack's API reads to reach the engines."""


def engine_path(stack: str) -> str:
    """The SSM path of a rack's engine material (the rack stack's UserData and roles name the same)."""
    return f"/convox/{stack}/engine"


class EngineCertificates(Model):
    """A CA made for one rack, the certificate every instance's engine presents, and the rack's client
    certificate: an engine accepts a client only with a certificate of this CA for client authentication,
    the rack trusts only engines with one of this CA for server authentication. The CA's key is not kept."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def secrets(self) -> dict[str, str]:
        """By :data:`ENGINE_SECRETS` name."""
        return {
            "ca": self.ca,
            "server-cert": self.server_cert,
            "server-key": self.server_key,
            "client-cert": self.client_cert,
            "client-key": self.client_key,
        }


def engine_certificates(rack: str, days: int = 3650) -> EngineCertificates:
    """New engine TLS material for ``rack`` (EC P-256; CPU work: call it in a thread)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64])])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{rack} engines CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issued(common: str, usage: x509.ObjectIdentifier) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("*.compute.internal"), x509.DNSName("localhost")]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key(key)

    server_cert, server_key = issued(f"{rack} engine", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = issued(f"{rack} rack", ExtendedKeyUsageOID.CLIENT_AUTH)
    return EngineCertificates(
        ca=ca.public_bytes(serialization.Encoding.PEM).decode(),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
    )


async def store_engine_certificates(ssm: Any, stack: str, certificates: EngineCertificates) -> None:
    """Keep the engine material in the rack's secrets: one SSM SecureString per piece."""
    for key, value in certificates.secrets().items():
        await ssm.put_parameter(
            Name=f"{engine_path(stack)}/{key}",
            Value=value,
            Type="SecureString",
            Overwrite=True,
            Description=f"Rack {stack}: engine TLS {key}",
        )


async def read_engine_secrets(ssm: Any, stack: str, names: tuple[str, ...] = RACK_SECRETS) -> dict[str, str]:
    """The named pieces of the rack's engine material, decrypted (never logged)."""
    paths = [f"{engine_path(stack)}/{key}" for key in names]
    found = await ssm.get_parameters(Names=paths, WithDecryption=True)
    values = {str(p["Name"]).rsplit("/", 1)[-1]: str(p["Value"]) for p in found.get("Parameters", [])}
    missing = [key for key in names if key not in values]
    if missing:
        from shared.errors import Unavailable

        raise Unavailable(
            f"the rack's engine certificates are missing: {', '.join(missing)} under {engine_path(stack)}"
        )
    return values
