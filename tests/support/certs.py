"""Certificates made on the spot for the TLS tests: a CA, a server certificate for 127.0.0.1 and
localhost, and client certificates (one signed by the CA, one self-signed stranger), as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertSet:
    ca: Path  # the CA certificate (trust anchor for both sides)
    server: KeyPair
    client: KeyPair  # signed by the CA
    stranger: KeyPair  # self-signed: no CA the server trusts vouches for it

    def client_context(self, client: KeyPair | None = None) -> ssl.SSLContext:
        """A client-side context trusting the test CA, presenting `client` when given."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context


def make_certs(folder: Path) -> CertSet:
    """Write ca.pem, server.pem/.key, client.pem/.key and stranger.pem/.key into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("minipacs test CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / "ca.pem", ca_cert)
    server = _leaf(folder, "server", ca_cert.subject, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, alt_names=True)
    client = _leaf(folder, "client", ca_cert.subject, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _leaf(folder, "stranger", None, None, ExtendedKeyUsageOID.CLIENT_AUTH)
    return CertSet(folder / "ca.pem", server, client, stranger)


def _leaf(
    folder: Path,
    name: str,
    issuer: x509.Name | None,
    issuer_key: rsa.RSAPrivateKey | None,
    purpose: x509.ObjectIdentifier,
    *,
    alt_names: bool = False,
) -> KeyPair:
    """A certificate for `name`, signed by the issuer (self-signed when there is none)."""
    key = _key()
    subject = _name(name)
    builder = (
        _builder(subject, issuer or subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    if alt_names:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    _write(pair.cert, cert)
    pair.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pair


def _key() -> rsa.RSAPrivateKey:
    # RSA rather than EC: dcmtk's default (BCP 195) profile offers ECDHE-RSA suites.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
