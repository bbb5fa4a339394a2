"""Certificates for TLS clusters on loopback: a CA, member certificates and a client certificate.

Made in Python (the ``cryptography`` package, a test dependency), so no
openssl command is needed. Both our members and etcd's take the same files
and the same flags (:meth:`Certificates.member_flags`).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from kvstore.client import TLSConfig


@dataclass(frozen=True)
class Certificates:
    """PEM files in one directory: ``ca``, ``server`` (client port), ``peer`` and ``client``."""

    directory: Path

    def path(self, name: str, kind: str = "crt") -> Path:
        return self.directory / f"{name}.{kind}"

    @property
    def ca(self) -> Path:
        return self.path("ca")

    def member_flags(self, client_cert_auth: bool = True) -> list[str]:
        """etcd's TLS flags for a member serving https client and peer URLs."""
        flags = [
            f"--cert-file={self.path('server')}",
            f"--key-file={self.path('server', 'key')}",
            f"--trusted-ca-file={self.ca}",
            f"--peer-cert-file={self.path('peer')}",
            f"--peer-key-file={self.path('peer', 'key')}",
            f"--peer-trusted-ca-file={self.ca}",
        ]
        if client_cert_auth:
            flags += ["--client-cert-auth", "--peer-client-cert-auth"]
        return flags

    def etcdctl_flags(self, with_client_cert: bool = True) -> list[str]:
        """etcdctl's flags to trust the CA and (by default) present the client certificate."""
        flags = [f"--cacert={self.ca}"]
        if with_client_cert:
            flags += [f"--cert={self.path('client')}", f"--key={self.path('client', 'key')}"]
        return flags

    def client_tls(self) -> TLSConfig:
        """Our client's settings: trust the CA, present the client certificate."""
        return TLSConfig(self.ca, self.path("client"), self.path("client", "key"))

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS requests (a member's /health) with the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.path("client"), self.path("client", "key"))
        return context


def make_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> Certificates:
    """Write a fresh CA and certificates it signs for ``hosts`` (IP addresses or DNS names).

    Member certificates serve both as server and as client certificates: a
    member dials its peers (and etcd its own client port) with them.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = directory / f"{stem}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("kvstore test CA"))
        .issuer_name(name("kvstore test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca_cert)

    def alt_name(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    def issue(stem: str, usages: list[x509.ObjectIdentifier]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(stem))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if ExtendedKeyUsageOID.SERVER_AUTH in usages:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([alt_name(h) for h in hosts]), critical=False
            )
        write(stem, key, builder.sign(ca_key, hashes.SHA256()))

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    issue("server", both)
    issue("peer", both)
    issue("client", [ExtendedKeyUsageOID.CLIENT_AUTH])
    return Certificates(directory)
