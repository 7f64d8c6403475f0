"""Throwaway databases: a SQLite file in a temp folder, or a fresh PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    return os.environ.get("RUNPLANE_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards.

    A missing PostgreSQL is an error, never a skip: the PostgreSQL tests are part
    of the suite.
    """
    admin = make_url(postgres_admin_url())
    name = f"runplane_test_{uuid.uuid4().hex[:12]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        raise RuntimeError(
            f"PostgreSQL at {admin.render_as_string()} is required by the test suite "
            f"(set RUNPLANE_TEST_POSTGRES_URL): {error}"
        ) from error
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_replicas() -> Iterator[tuple[Database, Database]]:
    """Two `Database`s on one fresh PostgreSQL database, as two replicas hold it."""
    with fresh_postgres_database() as url:
        this, other = Database(url), Database(url)
        upgrade(this.engine)
        try:
            yield this, other
        finally:
            this.dispose()
            other.dispose()


@contextmanager
def database_url(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'runplane.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url
