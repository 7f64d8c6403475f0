"""Server settings: one frozen value; its flag fields are `runplane serve`'s flags.

A field declared with `flag(...)` or `switch(...)` is a `runplane serve` flag with
its RUNPLANE_<FLAG> twin (see `runplane.client.cli_support`); the other fields are
tuning knobs for tests and benchmarks. A new serve flag is one field here.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from runplane.client.cli_support import flag, positive_int, seconds, switch

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///runplane.db"
EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "asyncio" if sys.platform == "win32" else "uvloop"
"""uvloop wherever it is installed with the server (it has no Windows build)."""
MAX_STRUCT_BYTES = 1 << 20
"""The largest --max-struct-bytes: a run's three structs (metadata, kwargs, result) at
this size still fit in the 4 MiB message that gRPC clients accept by default."""


class ConfigError(ValueError):
    """Settings or a file they name that cannot be used; the message says where and why."""


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


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return value


def struct_bytes(text: str) -> int:
    value = positive_int(text)
    if value > MAX_STRUCT_BYTES:
        raise ValueError(f"{text} is more than {MAX_STRUCT_BYTES}, and a run must fit in a message")
    return value


def database_url_flag() -> str:
    """`--database-url`, which `db upgrade` takes as well as `serve`."""
    value: str = flag(
        DEFAULT_DATABASE_URL,
        help="SQLAlchemy URL: sqlite:///runplane.db (relative to the working directory) "
        "or postgresql://user@host/db.",
        metavar="URL",
    )
    return value


@dataclass(frozen=True, slots=True)
class ServerConfig:
    address: str = flag(
        DEFAULT_ADDRESS, help="Where to listen, host:port (:0 picks a free port).", metavar="ADDR"
    )
    database_url: str = database_url_flag()
    event_retention: float = flag(
        "24h",
        parse=seconds,
        metavar="DURATION",
        help="How long the event log keeps changes for watchers to resume from.",
    )
    """Seconds of history the event log keeps for watchers to resume from."""
    run_retention: float | None = flag(
        None,
        parse=positive_seconds,
        metavar="DURATION",
        help="Delete runs that ended longer ago than this, e.g. 30d (default: keep them).",
    )
    """Seconds after its end that a run is deleted; None: runs are kept."""
    max_attempts: int = flag(
        "3",
        parse=positive_int,
        metavar="N",
        help=(
            "Claims of a run before an expired lease makes it ERROR; also the limit of "
            "retry policies that leave max_attempts 0."
        ),
    )
    """Claims of one run before an expired lease turns it into ERROR, unless its retry
    policy sets another limit."""
    max_struct_bytes: int = flag(
        "262144",
        parse=struct_bytes,
        metavar="BYTES",
        help=f"Largest metadata, kwargs or result accepted, each (at most {MAX_STRUCT_BYTES}).",
    )
    """Largest serialized metadata, kwargs or result accepted, each."""
    shutdown_grace: float = flag(
        "10s",
        parse=seconds,
        metavar="DURATION",
        help="Time in-flight calls get to finish on SIGTERM or SIGINT.",
    )
    """Seconds in-flight calls get to finish after SIGTERM."""
    log_level: str = flag(
        "info", choices=("debug", "info", "warning", "error"), help="Least severe level logged."
    )
    log_format: str = flag(
        "logfmt", choices=("logfmt", "json"), help="One record per line, as logfmt or as JSON."
    )
    event_loop: str = flag(
        DEFAULT_EVENT_LOOP,
        choices=EVENT_LOOPS,
        help="The asyncio event loop served on: uvloop costs less CPU per call.",
    )
    access_log: bool = switch(
        help="Log one line per call: method, code, duration, peer, principal."
    )
    metrics_address: str = flag(
        "",
        metavar="HOST:PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 "
        "(default off).",
    )
    """HOST:PORT serving Prometheus' /metrics; empty: no metrics."""
    stats_interval: float = flag(
        "5s",
        parse=seconds,
        metavar="DURATION",
        help="How often the queue and run gauges are read from the database (with "
        "--metrics-address).",
    )
    metrics_max_assistants: int = flag(
        "50",
        parse=positive_int,
        metavar="N",
        help="Assistants per namespace whose queues get series of their own; the rest are "
        "summed as assistant_id=other.",
    )
    otlp_endpoint: str = flag(
        "",
        metavar="URL",
        help="Export traces over OTLP/gRPC, e.g. http://127.0.0.1:4317 (default off, unless "
        "the OTEL_* variables turn tracing on).",
    )
    """Where to export traces; empty: as the OTEL_* variables say (off by default)."""
    tls_cert: Path | None = flag(
        None,
        parse=Path,
        metavar="FILE",
        help="PEM certificate chain; with --tls-key, serve TLS only.",
    )
    tls_key: Path | None = flag(
        None, parse=Path, metavar="FILE", help="PEM private key of --tls-cert."
    )
    tls_client_ca: Path | None = flag(
        None,
        parse=Path,
        metavar="FILE",
        help="PEM CA: require client certificates it signed (mTLS).",
    )
    """Clients must present a certificate this CA signed (mTLS)."""
    auth_config: Path | None = flag(
        None,
        parse=Path,
        metavar="FILE",
        help="TOML file of principals, tokens and grants (default: no authentication, every "
        "caller is admin).",
    )
    insecure: bool = switch(
        help="Serve a non-loopback address without TLS or --auth-config all the same."
    )
    max_watches_per_principal: int = flag(
        "1000", parse=positive_int, metavar="N", help="Open watch streams one caller may hold."
    )
    rate_limit: Rate | None = flag(
        None,
        parse=Rate.parse,
        metavar="RPS[:BURST]",
        help="Calls per second (and burst) each caller may make (default: no limit).",
    )
    max_streams_per_connection: int = flag(
        "2000",
        parse=positive_int,
        metavar="N",
        help="Concurrent calls one connection may hold.",
    )
    """Kept above the watch limit, so a single-channel client meets TOO_MANY_WATCHES
    before its calls queue."""
    min_ping_interval: float = flag(
        "10s",
        parse=seconds,
        metavar="DURATION",
        help="Clients pinging a quiet connection more often than this are disconnected.",
    )
    compaction_interval: float = 30.0
    """Seconds between compaction rounds (the contract asks for at most 30)."""
    retention_interval: float = 60.0
    """Seconds between rounds of --run-retention: runs outlive it by about that."""
    watch_poll_interval: float = 1.0
    """Seconds between looks at the event log when no doorbell rang (a fallback)."""
    watch_buffer: int = 1024
    """Events queued per watch stream before it falls back to reading the event log."""
    reload_interval: float = 1.0
    """Seconds between looks at the certificate and auth config files for changes."""
