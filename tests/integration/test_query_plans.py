"""The claim path's queries use indexes, so a backlog of runs does not slow every claim.

Timings do not belong in tests; query plans do: SQLite's EXPLAIN QUERY PLAN is
deterministic for a given schema and statement.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Connection, event

from runplane.server.records import now_us
from runplane.server.store.database import Database
from runplane.server.store.dialects import SQLite
from runplane.server.store.migrate import upgrade
from runplane.server.store.run_store import RunStore


def _plans_of(database: Database, use: object) -> list[str]:
    """The query plan of every SELECT that `use(store)` runs."""
    plans: list[str] = []
    with database.engine.connect() as connection:

        @event.listens_for(connection, "before_cursor_execute")
        def explain(
            conn: Connection, cursor: object, statement: str, params: object, *_: object
        ) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)  # type: ignore[arg-type]
                plans.append(" | ".join(str(row[3]) for row in rows))

        assert callable(use)
        use(RunStore(connection, SQLite()))
    return plans


@pytest.fixture
def database(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'plans.db'}")
    upgrade(database.engine)
    return database


def test_claim_for_an_assistant_seeks_its_pending_runs(database: Database) -> None:
    plans = _plans_of(database, lambda store: store.claimable(now_us(), ["agent"], 1))
    assert any("ix_runs_assistant_status_queue" in plan for plan in plans), plans
    assert not any("SCAN runs" in plan for plan in plans), plans


def test_next_start_after_is_an_index_seek(database: Database) -> None:
    plans = _plans_of(database, lambda store: store.next_start_after(now_us()))
    assert plans
    assert all("ix_runs_status_start_after" in plan for plan in plans), plans
