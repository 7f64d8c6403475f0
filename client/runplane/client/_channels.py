"""How the clients reach the server: plaintext or TLS (mTLS with a client certificate),
and the bearer token sent with every call.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

_LOCAL_SCHEMES = ("unix:", "unix-abstract:")


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings for a client; `tls=True` means all defaults (the system's CAs).

    `ca_file`: PEM CA certificates to trust instead of the system's. `cert_file` and
    `key_file`: this client's certificate and key, for servers that require one
    (mTLS); both or neither. `server_name`: the name to verify the server's
    certificate against, when it differs from the address's host.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLSConfig needs cert_file and key_file together, or neither")


@dataclass(frozen=True)
class Connection:
    """What opening a channel to the server takes, for the sync and asyncio clients alike."""

    credentials: grpc.ChannelCredentials | None
    """None: plaintext."""
    options: list[tuple[str, Any]]
    metadata: tuple[tuple[str, str], ...]
    """Sent with every call: the bearer token, if any."""


_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    # A channel whose server went away tries again at most every 2 s (grpc's default
    # backoff grows to 2 minutes): a watch resuming after a restart, or a worker's
    # claim loop, reconnects within moments of the server's return.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def connection(
    address: str,
    tls: bool | TLSConfig,
    token: str | None,
    channel_options: list[tuple[str, Any]],
) -> Connection:
    """Check the settings and turn them into credentials, options and call metadata.

    A token is never sent in plaintext beyond this machine: without TLS, the address
    must be a loopback one (development), else ValueError.
    """
    options = [*_DEFAULT_OPTIONS, *channel_options]  # the caller's, later, win
    credentials = None
    if tls is True:
        tls = TLSConfig()
    if isinstance(tls, TLSConfig):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca_file),
            private_key=_read(tls.key_file),
            certificate_chain=_read(tls.cert_file),
        )
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
    metadata: tuple[tuple[str, str], ...] = ()
    if token is not None:
        if not token or token != token.strip() or "\n" in token:
            raise ValueError("token must be a non-empty string without surrounding whitespace")
        if credentials is None and not is_loopback(address):
            raise ValueError(
                f"refusing to send a token in plaintext to {address}: connect over TLS "
                "(plaintext is for loopback addresses only)"
            )
        metadata = (("authorization", f"Bearer {token}"),)
    return Connection(credentials, options, metadata)


def is_loopback(address: str) -> bool:
    """Whether `address` reaches only this machine (a loopback host or a unix socket)."""
    if address.startswith(_LOCAL_SCHEMES):
        return True
    host = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = host.rsplit(":", 1)[0].strip("[]") if ":" in host else host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
