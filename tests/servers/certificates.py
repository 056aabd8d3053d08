"""Throwaway certificates for the TLS tests: a CA, a loopback server certificate it signed, and an unrelated CA.

The server binary has no TLS of its own, so the TLS proxy presents these. The unrelated CA exists for the
"client trusts the wrong CA" tests. EC P-256 keys keep generation to a few milliseconds.
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

#: How long the certificates stay valid around "now": long enough for any test run, short enough to be throwaway.
VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the PEM files :func:`create_certificates` wrote."""

    #: The CA that signed the server certificate: what a verifying client trusts.
    ca_file: Path
    #: Server certificate for 127.0.0.1 and localhost (both in the subject alternative names).
    cert_file: Path
    #: The server certificate's private key (unencrypted).
    key_file: Path
    #: A CA that signed nothing here: a client trusting only this one must reject the server.
    wrong_ca_file: Path


def create_certificates(directory: Path) -> CertificateFiles:
    """Write a fresh CA, server certificate and key, and an unrelated CA as PEM files into ``directory``."""
    if not directory.is_dir():
        raise ValueError(f"certificates need an existing directory to be written to, got {str(directory)!r}")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_cert = _authority("channels-valkey test CA", now)
    _, wrong_ca_cert = _authority("channels-valkey unrelated test CA", now)
    server_key, server_cert = _server_certificate(ca_key, ca_cert, now)

    files = CertificateFiles(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
        wrong_ca_file=directory / "wrong-ca.pem",
    )
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.wrong_ca_file.write_bytes(wrong_ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.key_file.chmod(0o600)
    return files


def _authority(
    common_name: str, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    # Strict verifiers (OpenSSL's X509_STRICT, the default from Python 3.13) want the key identifiers and usages.
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate
