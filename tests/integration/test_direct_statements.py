"""Statements run on the driver's cursor (`store/direct.py`), on a real SQLite file and a
real PostgreSQL database: the same rows and the same errors as through SQLAlchemy."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from runplane.server.records import (
    Change,
    ChangeType,
    MultitaskStrategy,
    RetryPolicy,
    Run,
    RunStatus,
)
from runplane.server.store.database import Database
from runplane.server.store.direct import DirectConnection
from runplane.server.store.migrate import upgrade
from runplane.server.store.schema import StoreSecretRow, StoreStateRow
from runplane.server.store.unit_of_work import UnitOfWork
from tests.support.databases import fresh_postgres_database, postgres_admin_url

_ADD_SECRET = insert(StoreSecretRow)
_REVISION = select(StoreStateRow.revision)


def _run(run_id: str) -> Run:
    return Run(
        run_id,
        f"thread-{run_id}",
        "assistant",
        RunStatus.PENDING,
        MultitaskStrategy.ENQUEUE,
        1,
        1,
        metadata={"team": "a", "nested": {"list": [1, 2.5, None, "x"], "empty": {}}},
        kwargs={"input": "héllo", "flag": True},
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        retry_policy=RetryPolicy(max_attempts=3),
        timeout=5_000_000,
    )


def _create(run: Run) -> Callable[[UnitOfWork], None]:
    def work(unit: UnitOfWork) -> None:
        unit.apply([Change(ChangeType.CREATED, dataclasses.replace(run))])

    return work


def test_statements_seen_before_skip_sqlalchemys_execution(database: Database) -> None:
    sent: list[tuple[str, bool]] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def _sent(*arguments: Any) -> None:
        statement, context = arguments[2], arguments[4]
        sent.append((statement, context is None))

    async def one_by_one() -> None:
        for index in range(4):
            del sent[:]
            await database.write(_create(_run(f"r{index}")))

    asyncio.run(one_by_one())
    # The last write's statements were all seen before: only SQLite's BEGIN, which
    # SQLAlchemy sends when the transaction starts, has an execution context.
    direct = [statement for statement, no_context in sent if no_context]
    through_sqlalchemy = [statement for statement, no_context in sent if not no_context]
    assert direct, sent
    assert all(statement.startswith("BEGIN") for statement in through_sqlalchemy), sent


def test_rows_read_directly_match_what_was_written(database: Database) -> None:
    written = _run("round-trip")

    async def write_then_read() -> list[Run | None]:
        await database.write(_create(written))
        # The first read goes through SQLAlchemy; the later ones run directly.
        return [
            await database.read(lambda unit: unit.runs.get("round-trip"), lookup=False)
            for _ in range(3)
        ]

    reads = asyncio.run(write_then_read())
    expected = dataclasses.replace(written, revision=1)
    assert reads == [expected, expected, expected]


def test_a_driver_error_is_raised_as_sqlalchemys(database: Database) -> None:
    with DirectConnection(database.engine) as connection:
        with connection.begin():
            connection.execute(_ADD_SECRET, {"name": "taken", "value": b"secret-1"})
        for _ in range(3):  # the third runs directly
            with pytest.raises(IntegrityError) as raised, connection.begin():
                connection.execute(_ADD_SECRET, {"name": "taken", "value": b"secret-2"})
            # Parameters stay out of the message: they may hold secrets.
            assert "secret-2" not in str(raised.value)
        with connection.begin():  # the connection is whole again
            assert connection.execute(_REVISION).scalar_one() == 0


def test_a_lost_postgresql_session_invalidates_the_connection() -> None:
    with fresh_postgres_database() as url:
        database = Database(url)
        try:
            upgrade(database.engine)
            connection = DirectConnection(database.engine)
            for _ in range(2):  # seen, then run directly
                with connection.begin():
                    connection.execute(_REVISION).scalar_one()
            with connection.begin():
                pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            admin = make_url(postgres_admin_url()).set(drivername="postgresql")
            with psycopg.connect(
                admin.render_as_string(hide_password=False), autocommit=True
            ) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(DBAPIError) as raised, connection.begin():
                connection.execute(_REVISION)
            assert raised.value.connection_invalidated
            assert connection.invalidated
            connection.close()
        finally:
            database.dispose()
