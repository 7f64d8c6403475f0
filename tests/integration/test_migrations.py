"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade
from runplane.server.store.schema import Base
from tests.support.databases import database_url


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migrated_schema_matches_the_models(backend: str, tmp_path: Path) -> None:
    with database_url(backend, tmp_path) as url:
        database = Database(url)
        try:
            upgrade(database.engine)
            upgrade(database.engine)  # a second upgrade is a no-op
            with database.engine.connect() as connection:
                differences = compare_metadata(
                    MigrationContext.configure(connection), Base.metadata
                )
        finally:
            database.dispose()
    assert differences == []
