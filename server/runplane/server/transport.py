"""How the server listens: TLS (and mTLS) with certificates rotated in place, the
connection limits, and the refusal to expose a plaintext or unauthenticated port.

Certificates are served through grpc's dynamic SSL credentials: grpc asks
`ServerCertificates` for a configuration at every new connection's handshake, and
gets a new one only after the files changed. Connections already open keep the
certificate they were made with, so a rotation drops no stream.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from runplane.server.config import ConfigError, ServerConfig

_LOCAL_SCHEMES = ("unix:", "unix-abstract:")


def options(config: ServerConfig) -> list[tuple[str, Any]]:
    """grpc server options: limits on what one connection may hold or do."""
    return [
        # A second server on a taken port must fail, not silently share it.
        ("grpc.so_reuseport", 0),
        # Bursts of thousands of new streams must queue, not be refused.
        ("grpc.server.max_pending_requests", 65536),
        # Streams beyond this on one connection wait for one to end (HTTP/2
        # SETTINGS_MAX_CONCURRENT_STREAMS), so one connection cannot hold every slot.
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # Ping idle clients; drop those that stop answering.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A client pinging more often than this without data gets strikes; past
        # max_ping_strikes its connection is closed (GOAWAY too_many_pings).
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.min_ping_interval * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def is_loopback(address: str) -> bool:
    """Whether `address` (host:port, [v6]:port or a unix socket) is reachable only locally."""
    if address.startswith(_LOCAL_SCHEMES):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, or empty (every interface)
        return False


def check_exposure(config: ServerConfig) -> None:
    """Refuse, unless `insecure`, to serve a non-loopback address without TLS or auth."""
    if config.insecure or is_loopback(config.address):
        return
    missing = [
        what
        for what, present in (
            ("TLS (--tls-cert/--tls-key)", config.tls_cert is not None),
            ("authentication (--auth-config)", config.auth_config is not None),
        )
        if not present
    ]
    if missing:
        raise ConfigError(
            f"refusing to serve {config.address} without {' and '.join(missing)}: it is "
            "not a loopback address; configure them, or pass --insecure to serve it anyway"
        )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    """PEM certificate chain, the server's own certificate first."""
    key: Path
    client_ca: Path | None = None
    """PEM CA certificates that client certificates must chain to (mTLS), if required."""


def tls_files(config: ServerConfig) -> TlsFiles | None:
    """The TLS files the config names, or None for plaintext; ConfigError if incomplete."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    return TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca)


class ServerCertificates:
    """The server's certificate, key and client CA, re-read when their files change."""

    name = "TLS certificates"

    def __init__(self, tls: TlsFiles) -> None:
        self._tls = tls
        self._initial = _configuration(tls)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()  # the fetcher runs on grpc's own threads

    def files(self) -> Sequence[Path]:
        return [path for path in (self._tls.cert, self._tls.key, self._tls.client_ca) if path]

    def reload(self) -> None:
        configuration = _configuration(self._tls)
        with self._lock:
            self._pending = configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # returning None means "unchanged"
            require_client_authentication=self._tls.client_ca is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            configuration, self._pending = self._pending, None
        return configuration


def _configuration(tls: TlsFiles) -> grpc.ServerCertificateConfiguration:
    """The files as grpc takes them, checked first: a key that does not match its
    certificate would otherwise fail every handshake, and only then."""
    chain = _read(tls.cert, "--tls-cert")
    key = _read(tls.key, "--tls-key")
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise ConfigError(f"--tls-cert {tls.cert}: not a PEM certificate chain") from None
    try:
        private_key = load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"--tls-key {tls.key}: not an unencrypted PEM private key") from None
    if _public(private_key.public_key()) != _public(certificates[0].public_key()):
        raise ConfigError(f"--tls-key {tls.key} does not belong to the certificate {tls.cert}")
    client_ca = None
    if tls.client_ca is not None:
        client_ca = _read(tls.client_ca, "--tls-client-ca")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(f"--tls-client-ca {tls.client_ca}: not PEM CA certificates") from None
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)


def _public(key: Any) -> bytes:
    encoded: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return encoded


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: {error.strerror}") from None
