"""`runplane serve` and `runplane db upgrade`, registered into the runplane CLI."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from runplane.server import config


def _flag(
    parser: argparse.ArgumentParser,
    flag: str,
    default: str,
    parse: Callable[[str], Any] = str,
    **options: Any,
) -> None:
    """Add `flag` and its RUNPLANE_<FLAG> environment twin. The flag wins over the
    variable, the variable over `default`; all three are parsed by `parse`."""
    variable = "RUNPLANE_" + flag.removeprefix("--").upper().replace("-", "_")
    parser.add_argument(
        flag, type=parse, default=parse(os.environ.get(variable, default)), **options
    )


def _switch(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """Add an on/off `flag`, also turned on by RUNPLANE_<FLAG>=true (or 1, yes, on)."""
    variable = "RUNPLANE_" + flag.removeprefix("--").upper().replace("-", "_")
    on = os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")
    parser.add_argument(flag, action="store_true", default=on, help=help)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _duration(text: str) -> float:
    try:
        return config.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = config.ServerConfig()
    serve = subparsers.add_parser(
        "serve",
        help="run the runplane server",
        description="Serve RunService, health and reflection. Every flag can also be set "
        "through RUNPLANE_<FLAG>, e.g. RUNPLANE_DATABASE_URL.",
    )
    _flag(serve, "--address", defaults.address)
    _add_database_url(serve)
    _flag(
        serve,
        "--event-retention",
        "24h",
        _duration,
        help="how long the event log keeps changes for watchers to resume (default 24h)",
    )
    _flag(
        serve,
        "--max-attempts",
        str(defaults.max_attempts),
        _positive_int,
        help="claims of a run before an expired lease makes it ERROR (default 3)",
    )
    _flag(
        serve,
        "--max-struct-bytes",
        str(defaults.max_struct_bytes),
        _positive_int,
        help="largest metadata or kwargs accepted, in bytes (default 262144)",
    )
    _flag(
        serve,
        "--shutdown-grace",
        "10s",
        _duration,
        help="time in-flight calls get to finish on SIGTERM (default 10s)",
    )
    _flag(
        serve,
        "--log-level",
        "info",
        str.lower,
        choices=["debug", "info", "warning", "error"],
    )
    _flag(
        serve,
        "--log-format",
        defaults.log_format,
        str.lower,
        choices=["logfmt", "json"],
        help="one record per line as logfmt (default) or as a JSON object",
    )
    _switch(serve, "--access-log", "log one line per call: method, code, duration, peer, principal")
    _flag(
        serve,
        "--metrics-address",
        defaults.metrics_address,
        help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 "
        "(default off)",
    )
    _flag(
        serve,
        "--otlp-endpoint",
        defaults.otlp_endpoint,
        help="export traces over OTLP/gRPC, e.g. http://127.0.0.1:4317 (default off, "
        "unless the OTEL_* variables turn tracing on)",
    )
    serve.set_defaults(func=_serve)

    database = subparsers.add_parser("db", help="manage the database schema")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_commands.add_parser("upgrade", help="apply pending migrations")
    _add_database_url(upgrade)
    upgrade.set_defaults(func=_upgrade)


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--database-url",
        config.DEFAULT_DATABASE_URL,
        help="SQLAlchemy URL: sqlite:///runplane.db (default) or postgresql://user@host/db",
    )


def _serve(args: argparse.Namespace) -> int:
    from runplane.server import app

    app.run(
        config.ServerConfig(
            address=args.address,
            database_url=args.database_url,
            event_retention=args.event_retention,
            max_attempts=args.max_attempts,
            max_struct_bytes=args.max_struct_bytes,
            shutdown_grace=args.shutdown_grace,
            log_level=args.log_level,
            log_format=args.log_format,
            access_log=args.access_log,
            metrics_address=args.metrics_address,
            otlp_endpoint=args.otlp_endpoint,
        )
    )
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from runplane.server.store.database import Database, redact
    from runplane.server.store.migrate import upgrade

    database = Database(args.database_url)
    try:
        upgrade(database.engine)
    finally:
        database.dispose()
    print(f"database {redact(args.database_url)} is at the latest schema")
    return 0
