"""Servers with TLS for tests: the files a test makes, and what a handshake shows."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.support.certificates import CertificateAuthority, Issued


@dataclass
class TlsFolder:
    """A CA and the server's certificate files in `folder`, rewritable to rotate them."""

    folder: Path
    ca: CertificateAuthority
    ca_file: Path
    cert_file: Path
    key_file: Path
    serial: int

    @classmethod
    def make(cls, folder: Path) -> TlsFolder:
        ca = CertificateAuthority()
        issued = ca.server()
        cert, key = issued.write(folder, "server")
        return cls(folder, ca, ca.write(folder), cert, key, issued.serial)

    def rotate(self) -> Issued:
        """A new server certificate and key from the same CA, in place of the old files."""
        issued = self.ca.server()
        issued.write(self.folder, "server")
        self.serial = issued.serial
        return issued

    def client_files(self, common_name: str, *dns_names: str) -> tuple[Path, Path]:
        """A client certificate of this CA, written next to the others."""
        return self.ca.client(common_name, *dns_names).write(self.folder, common_name)


def served_serial(
    address: str, ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> int:
    """The serial number of the certificate a new connection to `address` is shown."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
