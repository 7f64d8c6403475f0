"""Server settings: one frozen value built from flags and RUNPLANE_* variables."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///runplane.db"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in '90s', '15m', '24h', '1.5h', '250ms' or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 24h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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
    log_format: str = "logfmt"
    """logfmt or json: one record per line either way."""
    access_log: bool = False
    """Log one line per RPC: method, code, duration, peer, principal."""
    metrics_address: str = ""
    """HOST:PORT serving Prometheus' /metrics; empty: no metrics."""
    otlp_endpoint: str = ""
    """Where to export traces over OTLP/gRPC; empty: as the OTEL_* variables say (off)."""
