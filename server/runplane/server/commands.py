"""`runplane serve`, `runplane db upgrade` and `runplane auth`, registered into the CLI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
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


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _rate(text: str) -> config.Rate | None:
    if text in ("", "off"):
        return None
    try:
        return config.Rate.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_security_flags(serve: argparse.ArgumentParser) -> None:
    defaults = config.ServerConfig()
    for flag, what in (
        ("--tls-cert", "PEM certificate chain; with --tls-key, serve TLS only"),
        ("--tls-key", "PEM private key of --tls-cert"),
        ("--tls-client-ca", "PEM CA: require client certificates it signed (mTLS)"),
        ("--auth-config", "TOML file of principals, tokens and grants (default: no auth)"),
    ):
        _flag(serve, flag, "", _optional_path, metavar="FILE", help=what + "; re-read on change")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("RUNPLANE_INSECURE", "").lower() in ("1", "true", "yes"),
        help="serve a non-loopback address without TLS or --auth-config anyway",
    )
    _flag(
        serve,
        "--max-watches-per-principal",
        str(defaults.max_watches_per_principal),
        _positive_int,
        help="open watch streams one caller may hold (default 1000)",
    )
    _flag(
        serve,
        "--rate-limit",
        "off",
        _rate,
        metavar="RPS[:BURST]",
        help="calls per second each caller may make, health checks aside (default off)",
    )
    _flag(
        serve,
        "--max-streams-per-connection",
        str(defaults.max_streams_per_connection),
        _positive_int,
        help="concurrent calls one connection may hold; more wait (default 2000)",
    )
    _flag(
        serve,
        "--min-ping-interval",
        "10s",
        _duration,
        help="clients pinging a quiet connection more often are disconnected (default 10s)",
    )


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
    _add_security_flags(serve)
    serve.set_defaults(func=_serve)

    database = subparsers.add_parser("db", help="manage the database schema")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_commands.add_parser("upgrade", help="apply pending migrations")
    _add_database_url(upgrade)
    upgrade.set_defaults(func=_upgrade)

    auth = subparsers.add_parser("auth", help="make bearer tokens for the auth config")
    auth_commands = auth.add_subparsers(dest="auth_command", required=True)
    auth_commands.add_parser(
        "new-token", help="print a fresh token and the tokens_sha256 entry for it"
    ).set_defaults(func=_new_token)
    auth_commands.add_parser(
        "hash-token", help="read a token on stdin, print its sha256"
    ).set_defaults(func=_hash_token)


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--database-url",
        config.DEFAULT_DATABASE_URL,
        help="SQLAlchemy URL: sqlite:///runplane.db (default) or postgresql://user@host/db",
    )


def _serve(args: argparse.Namespace) -> int:
    from runplane.server import app

    try:
        app.run(
            config.ServerConfig(
                address=args.address,
                database_url=args.database_url,
                event_retention=args.event_retention,
                max_attempts=args.max_attempts,
                max_struct_bytes=args.max_struct_bytes,
                shutdown_grace=args.shutdown_grace,
                log_level=args.log_level,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                tls_client_ca=args.tls_client_ca,
                auth_config=args.auth_config,
                insecure=args.insecure,
                max_watches_per_principal=args.max_watches_per_principal,
                rate_limit=args.rate_limit,
                max_streams_per_connection=args.max_streams_per_connection,
                min_ping_interval=args.min_ping_interval,
            )
        )
    except config.ConfigError as error:
        print(f"runplane serve: {error}", file=sys.stderr)
        return 1
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


def _new_token(args: argparse.Namespace) -> int:
    from runplane.server.identity import hash_token, new_token

    token = new_token()
    print(f"token: {token}")
    print(f'tokens_sha256 = ["{hash_token(token)}"]')
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    from runplane.server.identity import hash_token

    token = sys.stdin.readline().strip()
    if not token:
        print("runplane auth hash-token: no token on stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0
