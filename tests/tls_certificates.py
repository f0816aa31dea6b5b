"""Certificates made at test time: a self-signed CA, a server certificate for 127.0.0.1/localhost, client ones.

Keys are ECDSA P-256 (fast to make). Everything is written as PEM files into one folder:

    material = make_tls_material(tmp_path)
    material.server_cert, material.server_key    # signed by material.ca_cert
    material.client_cert, material.client_key    # signed by the same CA (for mutual TLS)
    material.other_ca_cert                       # an unrelated CA: trusting it must fail
    material.stranger_cert, material.stranger_key  # a client certificate signed by the unrelated CA
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsMaterial:
    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    stranger_cert: Path
    stranger_key: Path


@dataclass(frozen=True)
class _Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: _Issued | None,
                 extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.certificate.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def _ca(common_name: str) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(common_name, key, None, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False), True),
    ])
    return _Issued(certificate, key)


def _leaf(common_name: str, ca: _Issued, usage: x509.ObjectIdentifier,
          alt_names: list[x509.GeneralName] | None = None) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]
    if alt_names:
        extensions.append((x509.SubjectAlternativeName(alt_names), False))
    return _Issued(_certificate(common_name, key, ca, extensions), key)


def _write(folder: Path, name: str, issued: _Issued) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def make_tls_material(folder: Path) -> TlsMaterial:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other_ca = _ca("avatar-backend test CA"), _ca("some other CA")
    server_names = [x509.DNSName(name) for name in SERVER_NAMES]
    server_ips = [x509.IPAddress(ipaddress.ip_address(address)) for address in SERVER_IPS]
    server = _leaf("localhost", ca, ExtendedKeyUsageOID.SERVER_AUTH, server_names + server_ips)
    client = _leaf("game-server-1", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _leaf("stranger", other_ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_cert, _ = _write(folder, "ca", ca)
    other_ca_cert, _ = _write(folder, "other-ca", other_ca)
    server_cert, server_key = _write(folder, "server", server)
    client_cert, client_key = _write(folder, "client", client)
    stranger_cert, stranger_key = _write(folder, "stranger", stranger)
    return TlsMaterial(folder, ca_cert, server_cert, server_key, client_cert, client_key, other_ca_cert,
                       stranger_cert, stranger_key)
