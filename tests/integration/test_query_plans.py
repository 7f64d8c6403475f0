"""The claim path's and the listings' queries use indexes, so a backlog of runs (or
another tenant's runs) does not slow every claim and every page.

Timings do not belong in tests; query plans do: SQLite's EXPLAIN QUERY PLAN is
deterministic for a given schema and statement.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Connection, event

from runplane.server.records import RunFilter, SortOrder, now_us
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


THREAD = "123e4567-e89b-42d3-a456-426614174000"
SHOP = frozenset({"shop"})


@pytest.mark.parametrize("namespaces", [None, SHOP, frozenset({"shop", "lab"})])
def test_claim_for_an_assistant_seeks_its_pending_runs(
    database: Database, namespaces: frozenset[str] | None
) -> None:
    plans = _plans_of(database, lambda store: store.claimable(now_us(), ["agent"], namespaces, 1))
    assert any("ix_runs_assistant_status_queue" in plan for plan in plans), plans
    # The thread's blockers are sought within its namespace.
    assert any("ix_runs_thread (thread_id=? AND namespace=?)" in plan for plan in plans), plans
    assert not any("SCAN runs" in plan for plan in plans), plans


def test_next_start_after_is_an_index_seek(database: Database) -> None:
    plans = _plans_of(database, lambda store: store.next_start_after(now_us()))
    assert plans
    assert all("ix_runs_status_start_after" in plan for plan in plans), plans


LISTINGS = {
    "a namespace": (RunFilter(namespaces=SHOP), "ix_runs_namespace_created (namespace=?)"),
    "an assistant in a namespace": (
        RunFilter(assistant_id="agent", namespaces=SHOP),
        "ix_runs_namespace_assistant_created (namespace=? AND assistant_id=?)",
    ),
    "a thread in a namespace": (
        RunFilter(thread_id=THREAD, namespaces=SHOP),
        "ix_runs_thread (thread_id=? AND namespace=?)",
    ),
    "a thread in every namespace": (
        RunFilter(thread_id=THREAD, namespaces=None),
        "ix_runs_thread (thread_id=?)",
    ),
    "every namespace": (RunFilter(namespaces=None), "SCAN runs USING INDEX ix_runs_created"),
}


@pytest.mark.parametrize("case", list(LISTINGS))
def test_a_listing_seeks_the_runs_it_shows(database: Database, case: str) -> None:
    run_filter, expected = LISTINGS[case]
    plans = _plans_of(database, lambda store: store.list_page(run_filter, SortOrder.DESC, None, 51))
    assert len(plans) == 1
    assert expected in plans[0], plans


def test_a_listing_of_several_namespaces_seeks_each(database: Database) -> None:
    run_filter = RunFilter(namespaces=frozenset({"shop", "lab"}))
    plans = _plans_of(database, lambda store: store.list_page(run_filter, SortOrder.DESC, None, 51))
    assert plans == ["SEARCH runs USING INDEX ix_runs_namespace_created (namespace=?)"] * 2


def test_a_thread_and_a_request_id_are_sought_within_their_namespace(database: Database) -> None:
    plans = _plans_of(
        database,
        lambda store: (
            store.inflight_on_thread("shop", THREAD),
            store.get_by_request_id("shop", "request-1"),
        ),
    )
    assert "ix_runs_thread (thread_id=? AND namespace=? AND status=?)" in plans[0], plans
    assert "ux_runs_namespace_request (namespace=? AND request_id=?)" in plans[1], plans
