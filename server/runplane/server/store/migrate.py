"""Apply the Alembic migrations: at server start-up and by `runplane db upgrade`."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, exc, text

from runplane.server.errors import CannotStart

# Any fixed key: replicas starting together take turns migrating (PostgreSQL).
_MIGRATION_LOCK = 0x72756E70


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`; CannotStart, in one line, if the database cannot be reached
    or written."""
    try:
        _upgrade(engine, revision)
    except exc.DBAPIError as error:
        why = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        why = why.removeprefix("connection failed: ")
        where = engine.url.render_as_string(hide_password=True)
        raise CannotStart(f"cannot use the database {where}: {why}") from None


def _upgrade(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", "runplane.server.store:migrations")
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
                connection.commit()
