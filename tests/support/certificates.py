"""Certificate authorities, server and client certificates made at test time.

Nothing here is committed as a file: every test (and the benchmark) makes its own
CA and keys with `cryptography`, in a temporary folder.
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

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in PEM, as files a server or client reads."""

    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """`stem.crt` and `stem.key` in `folder`, replaced whole (as a rotation would)."""
        cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
        _replace(cert, self.cert_pem)
        _replace(key, self.key_pem)
        return cert, key


def _replace(path: Path, data: bytes) -> None:
    staged = path.with_suffix(path.suffix + ".new")
    staged.write_bytes(data)
    staged.replace(path)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    def __init__(self, name: str = "runplane test CA") -> None:
        self._key = _key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path, stem: str = "ca") -> Path:
        path = folder / f"{stem}.crt"
        _replace(path, self.cert_pem)
        return path

    def server(self, *names: str) -> Issued:
        """A server certificate for `names` (default localhost) and 127.0.0.1."""
        alternative: list[x509.GeneralName] = [x509.DNSName(n) for n in names or ("localhost",)]
        alternative.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        return self._issue(
            names[0] if names else "localhost", alternative, ExtendedKeyUsageOID.SERVER_AUTH
        )

    def client(self, common_name: str, *dns_names: str) -> Issued:
        """A client certificate: `dns_names` as DNS SANs if any, else only the CN."""
        alternative: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        return self._issue(common_name, alternative, ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(
        self, common_name: str, alternative: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> Issued:
        key = _key()
        serial = x509.random_serial_number()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alternative:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial)
