"""A test CA made on the spot: a server certificate for 127.0.0.1 and localhost, and a
client certificate for mutual TLS, as PEM files in a folder."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _certificate(subject: str, key, issuer=None, issuer_key=None, ca=False, sans=()):  # noqa: ANN001
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(obj) -> bytes:  # noqa: ANN001
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(folder: Path) -> Path:
    """ca.pem, server.pem/server.key (127.0.0.1, localhost) and client.pem/client.key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("embedsense test CA", ca_key, ca=True)
    files = {"ca.pem": _pem(ca)}
    server_names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for name, sans in (("server", server_names), ("client", [])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, issuer=ca, issuer_key=ca_key, sans=sans)
        files[f"{name}.pem"], files[f"{name}.key"] = _pem(cert), _pem(key)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
