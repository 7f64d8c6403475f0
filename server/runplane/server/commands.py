"""`runplane serve` and `runplane db upgrade`, registered into the runplane CLI."""

from __future__ import annotations

import argparse
import os
from typing import Any

from runplane.server import config


def _env(flag: str, default: Any) -> Any:
    """The flag's RUNPLANE_<FLAG> twin, or its default."""
    return os.environ.get("RUNPLANE_" + flag.upper().replace("-", "_"), default)


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
    serve.add_argument("--address", default=_env("address", defaults.address))
    _add_database_url(serve)
    serve.add_argument(
        "--event-retention",
        type=_duration,
        default=_duration(_env("event_retention", "24h")),
        help="how long the event log keeps changes for watchers to resume (default 24h)",
    )
    serve.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=_positive_int(_env("max_attempts", str(defaults.max_attempts))),
        help="claims of a run before an expired lease makes it ERROR (default 3)",
    )
    serve.add_argument(
        "--max-struct-bytes",
        type=_positive_int,
        default=_positive_int(_env("max_struct_bytes", str(defaults.max_struct_bytes))),
        help="largest metadata or kwargs accepted, in bytes (default 262144)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_duration,
        default=_duration(_env("shutdown_grace", "10s")),
        help="time in-flight calls get to finish on SIGTERM (default 10s)",
    )
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        default=_env("log_level", "info"),
    )
    serve.set_defaults(func=_serve)

    database = subparsers.add_parser("db", help="manage the database schema")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_commands.add_parser("upgrade", help="apply pending migrations")
    _add_database_url(upgrade)
    upgrade.set_defaults(func=_upgrade)


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=_env("database_url", config.DEFAULT_DATABASE_URL),
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
