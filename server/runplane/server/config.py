"""Server settings: one frozen value built from flags and RUNPLANE_* variables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///runplane.db"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    """Settings or a file they name that cannot be used; the message says where and why."""


def parse_duration(text: str) -> float:
    """Seconds in '90s', '15m', '24h', '1.5h', '250ms' or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 24h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


_RATE = re.compile(r"(\d+(?:\.\d+)?)(?::(\d+))?")


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int
    """Calls allowed at once after a quiet spell."""

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`RPS` or `RPS:BURST` (the burst defaults to one second's worth, at least 1)."""
        match = _RATE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a rate: {text!r} (examples: 100, 100:200, 0.5:5)")
        per_second = float(match.group(1))
        burst = int(match.group(2)) if match.group(2) else max(1, int(per_second))
        if per_second <= 0 or burst < 1:
            raise ValueError(f"a rate needs RPS > 0 and BURST >= 1, got {text!r}")
        return cls(per_second, burst)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    address: str = DEFAULT_ADDRESS
    database_url: str = DEFAULT_DATABASE_URL
    event_retention: float = 24 * 3600.0
    """Seconds of history the event log keeps for watchers to resume from."""
    compaction_interval: float = 30.0
    """Seconds between compaction rounds (the contract asks for at most 30)."""
    watch_poll_interval: float = 1.0
    """Seconds between looks at the event log when no doorbell rang (a fallback)."""
    watch_buffer: int = 1024
    """Events queued per watch stream before it falls back to reading the event log."""
    max_attempts: int = 3
    """Claims of one run before an expired lease turns it into ERROR."""
    max_struct_bytes: int = 256 * 1024
    """Largest serialized metadata or kwargs accepted, each."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM."""
    log_level: str = "INFO"
    tls_cert: Path | None = None
    """PEM certificate chain: with tls_key, the port serves TLS only."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """PEM CA certificates: clients must present a certificate it signed (mTLS)."""
    auth_config: Path | None = None
    """TOML file of principals, credentials and grants; None: every caller is admin."""
    insecure: bool = False
    """Serve a non-loopback address without TLS or authentication all the same."""
    reload_interval: float = 1.0
    """Seconds between looks at the certificate and auth config files for changes."""
    max_watches_per_principal: int = 1000
    rate_limit: Rate | None = None
    """Calls per second (and burst) each principal may make; None: no limit."""
    max_streams_per_connection: int = 2000
    """Concurrent calls one connection may hold; kept above the watch limit so a
    single-channel client meets TOO_MANY_WATCHES before its calls queue."""
    min_ping_interval: float = 10.0
    """Seconds a client must leave between pings on a quiet connection."""
