"""`runplane serve`, `runplane db upgrade` and `runplane auth`: the server's commands of the
runplane CLI.

They plug into the client's `runplane` command through the `runplane.commands` entry
points (pyproject.toml). Their flags are the flag fields of `ServerConfig` and
`DatabaseSettings`. The server's dependencies are imported only when a command runs,
so a client-only install can say what is missing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from runplane.client.cli_support import CommandError, settings_from
from runplane.server.config import ConfigError, ServerConfig, database_url_flag

_INSTALL_HINT = "pip install 'runplane[server]'"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    database_url: str = database_url_flag()


def _server_dependencies_missing(missing: ImportError) -> CommandError:
    return CommandError(
        f"the server's dependencies are not installed ({missing.name} is missing): {_INSTALL_HINT}"
    )


@click.command()
@settings_from(ServerConfig, "config")
def serve(config: ServerConfig) -> None:
    """Run the runplane server: RunService, health and reflection.

    Every flag can also be set through its RUNPLANE_<FLAG> variable, e.g.
    RUNPLANE_DATABASE_URL. It logs one `msg=ready` line with the bound address, and
    exits 0 after SIGTERM or SIGINT once in-flight calls have finished.
    """
    try:
        from runplane.server import app
        from runplane.server.errors import CannotStart
    except ImportError as missing:
        raise _server_dependencies_missing(missing) from None
    try:
        app.run(config)
    except (ConfigError, CannotStart) as error:
        raise CommandError(str(error)) from None


@click.group()
def db() -> None:
    """Manage the database schema (the server also migrates at start-up)."""


@db.command()
@settings_from(DatabaseSettings)
def upgrade(settings: DatabaseSettings) -> None:
    """Apply the pending migrations."""
    try:
        from runplane.server.store.database import Database, redact
        from runplane.server.store.migrate import upgrade as upgrade_schema
    except ImportError as missing:
        raise _server_dependencies_missing(missing) from None
    database = Database(settings.database_url)
    try:
        upgrade_schema(database.engine)
    finally:
        database.dispose()
    click.echo(f"database {redact(settings.database_url)} is at the latest schema")


@click.group()
def auth() -> None:
    """Make bearer tokens for the --auth-config file."""


@auth.command("new-token")
def new_token() -> None:
    """Print a fresh random token and the tokens_sha256 entry for it."""
    from runplane.server.identity import hash_token, new_token

    token = new_token()
    click.echo(f"token: {token}")
    click.echo(f'tokens_sha256 = ["{hash_token(token)}"]')


@auth.command("hash-token")
def hash_token() -> None:
    """Read a token on stdin and print its sha256, for tokens_sha256."""
    from runplane.server.identity import hash_token

    token = sys.stdin.readline().strip()
    if not token:
        raise CommandError("no token on stdin", exit_code=2)
    click.echo(hash_token(token))
