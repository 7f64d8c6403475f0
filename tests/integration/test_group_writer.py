"""The group-committing writer, on a real SQLite file and a real PostgreSQL database.

Transactions queued while the writer is busy share one commit; a refusal that
wrote nothing stays private to its transaction, and any failure after a write
undoes the group and reruns each member alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from runplane.server.errors import RunNotFound
from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, RunStatus
from runplane.server.store.database import CHANGES, Database
from tests.support.databases import database_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_url(request.param, tmp_path) as url:
        database = Database(url)
        with database.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE notes (body TEXT PRIMARY KEY)")
        try:
            yield database
        finally:
            database.dispose()


def _change(body: str) -> Change:
    run = Run(body, "thread", "assistant", RunStatus.PENDING, MultitaskStrategy.ENQUEUE, 0, 0)
    return Change(ChangeType.CREATED, run)


def _note(body: str) -> Callable[[Connection], str]:
    """Writes one note, recording it as a change like RunStore.apply does."""

    def work(connection: Connection) -> str:
        connection.info[CHANGES].append(_change(body))
        connection.execute(text("INSERT INTO notes VALUES (:body)"), {"body": body})
        return threading.current_thread().name

    return work


def _refuse_before_writing(connection: Connection) -> str:
    raise RunNotFound("00000000-0000-4000-8000-000000000000")


def _refuse_after_writing(connection: Connection) -> str:
    _note("half-done")(connection)
    raise RunNotFound("00000000-0000-4000-8000-000000000000")


def _blocker(release: threading.Event) -> Callable[[Connection], str]:
    def work(connection: Connection) -> str:
        release.wait(5)
        return "blocker"

    return work


def _notes(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return {row[0] for row in connection.exec_driver_sql("SELECT body FROM notes")}


def _published(database: Database) -> list[str]:
    """Where the database's commit listener writes down what it was told."""
    told: list[str] = []
    database.on_commit(lambda changes: told.extend(change.run.run_id for change in changes))
    return told


async def _run_group(
    database: Database, works: list[Callable[[Connection], str]]
) -> list[str | BaseException]:
    """Queue `works` while the writer is busy, so they form one group."""
    release = threading.Event()
    first = asyncio.ensure_future(database.write(_blocker(release)))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(database.write(work)) for work in works]
    await asyncio.sleep(0.05)
    release.set()
    await first
    return await asyncio.gather(*rest, return_exceptions=True)


def test_refusal_before_writing_leaves_the_rest_of_the_group_committed(
    database: Database,
) -> None:
    told = _published(database)
    outcomes = asyncio.run(_run_group(database, [_note("a"), _refuse_before_writing, _note("b")]))
    assert outcomes[0] == outcomes[2] == "runplane-db-write"
    assert isinstance(outcomes[1], RunNotFound)
    assert _notes(database) == {"a", "b"}
    assert told == ["a", "b"]


def test_refusal_after_writing_is_undone_and_the_others_rerun_alone(database: Database) -> None:
    told = _published(database)
    outcomes = asyncio.run(
        _run_group(database, [_note("a"), _refuse_after_writing, _note("b"), _note("a")])
    )
    assert outcomes[0] == outcomes[2] == "runplane-db-write"
    assert isinstance(outcomes[1], RunNotFound)
    assert isinstance(outcomes[3], Exception)  # duplicate key: only its own call fails
    assert _notes(database) == {"a", "b"}
    assert told == ["a", "b"]  # nothing rolled back is ever published


@pytest.mark.timeout(60)
def test_many_queued_writes_all_commit(database: Database) -> None:
    bodies = [f"n{i:04d}" for i in range(500)]

    async def write_all() -> list[str]:
        return await asyncio.gather(*(database.write(_note(body)) for body in bodies))

    asyncio.run(write_all())
    assert _notes(database) == set(bodies)
