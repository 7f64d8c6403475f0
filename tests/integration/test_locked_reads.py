"""A lock and the read it guards, in one call (PostgreSQL, migration 0010), on two
replicas of one real database.

A change reads its run again under its thread's lock. The writer knows the thread of
the runs it wrote, so a completion is one statement; and a claim tries the candidate
heads' locks and reads the first still claimable one in one statement too. A run id
may be taken again by a run on another thread once the first is deleted: the lock
taken must then be that thread's, or two writers could change one thread at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, event

from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.dialects import Lock, lock_key, scoped_key
from runplane.server.store.run_store import LockBusy
from runplane.server.store.unit_of_work import UnitOfWork
from tests.support.databases import postgres_replicas

pytestmark = pytest.mark.postgres

T = TypeVar("T")


@pytest.fixture
def replicas() -> Iterator[tuple[Database, Database]]:
    with postgres_replicas() as pair:
        yield pair


def _create(run_id: str, thread_id: str, created_at: int = 0) -> Callable[[UnitOfWork], Run]:
    run = Run(
        run_id, thread_id, "agent", RunStatus.PENDING, MultitaskStrategy.ENQUEUE, created_at, 0
    )
    return lambda unit: unit.apply([Change(ChangeType.CREATED, run)])[0]


def _delete(run_id: str) -> Callable[[UnitOfWork], None]:
    def work(unit: UnitOfWork) -> None:
        run = unit.runs.get_locked(run_id)
        assert run is not None
        unit.apply([Change(ChangeType.DELETED, run, previous=run)])

    return work


def _write(database: Database, work: Callable[[UnitOfWork], T]) -> T:
    return asyncio.run(database.write(work))


def _thread_held_elsewhere(database: Database, thread_id: str) -> bool:
    """Whether another session holds the lock of `thread_id` (default namespace)."""
    with database.engine.connect() as connection:
        free = connection.exec_driver_sql(
            "SELECT pg_try_advisory_xact_lock(%(lock)s, %(key)s)",
            {"lock": int(Lock.THREAD), "key": lock_key(scoped_key("default", thread_id))},
        ).scalar_one()
        connection.rollback()
    return not free


def _statements_of(database: Database, work: Callable[[UnitOfWork], T]) -> tuple[T, list[str]]:
    """What `work` returns, and the statements it ran, in a write transaction."""
    statements: list[str] = []

    def count(conn: Connection, cursor: object, statement: str, *rest: Any) -> None:
        statements.append(statement)

    def counted(unit: UnitOfWork) -> T:
        event.listen(database.engine, "before_cursor_execute", count)
        try:
            return work(unit)
        finally:
            event.remove(database.engine, "before_cursor_execute", count)

    return _write(database, counted), statements


def test_a_run_this_replica_wrote_is_locked_and_read_in_one_statement(
    replicas: tuple[Database, Database],
) -> None:
    this, other = replicas
    _write(this, _create("mine", "t-mine"))
    _write(other, _create("theirs", "t-theirs"))

    found, statements = _statements_of(this, lambda unit: unit.runs.get_locked("mine"))
    assert found is not None
    assert found.thread_id == "t-mine"
    assert len(statements) == 1, statements

    # Another replica's run: its thread is read first.
    found, statements = _statements_of(this, lambda unit: unit.runs.get_locked("theirs"))
    assert found is not None
    assert found.thread_id == "t-theirs"
    assert len(statements) == 2, statements


def test_a_run_id_taken_again_on_another_thread_locks_that_thread(
    replicas: tuple[Database, Database],
) -> None:
    """This replica remembers the run on thread a; the other deletes it and makes a run
    with the same id on thread b. A change of it here must hold b's lock."""
    this, other = replicas
    _write(this, _create("reused", "a"))
    _write(other, _delete("reused"))
    _write(other, _create("reused", "b"))

    def change(unit: UnitOfWork) -> tuple[str, bool]:
        run = unit.runs.get_locked("reused")
        assert run is not None
        return run.thread_id, _thread_held_elsewhere(this, "b")

    assert _write(this, change) == ("b", True)
    assert not _thread_held_elsewhere(this, "b")  # released at commit


def _claim_while_held(this: Database, other: Database, thread_id: str) -> str | None:
    """The run id a claim on `this` takes while `other` holds the lock of `thread_id`."""

    def claim(unit: UnitOfWork) -> str | None:
        with other.engine.connect() as holder:
            holder.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(%(lock)s, %(key)s)",
                {"lock": int(Lock.THREAD), "key": lock_key(scoped_key("default", thread_id))},
            )
            run = unit.heads.first_claimable(now_us(), None, ())
            holder.rollback()
        return None if run is None else run.run_id

    return _write(this, claim)


def test_a_claim_passes_over_a_head_whose_thread_is_busy(
    replicas: tuple[Database, Database],
) -> None:
    this, other = replicas
    _write(this, _create("first", "busy", created_at=1))  # due first
    _write(this, _create("second", "free", created_at=2))

    assert _thread_held_elsewhere(this, "busy") is False
    assert _claim_while_held(this, other, "busy") == "second"
    # Its thread free again, the first head is the first claimed.
    first = _write(this, lambda unit: unit.heads.first_claimable(now_us(), None, ()))
    assert first is not None
    assert first.run_id == "first"


def test_a_claim_is_one_statement(replicas: tuple[Database, Database]) -> None:
    this, _ = replicas
    _write(this, _create("first", "t-first", created_at=1))
    _write(this, _create("second", "t-second", created_at=2))

    claimed, statements = _statements_of(
        this, lambda unit: unit.heads.first_claimable(now_us(), None, ())
    )
    assert claimed is not None
    assert claimed.run_id == "first"
    assert len(statements) == 1, statements


def _forget_lock_keys(database: Database) -> None:
    """Make every head look written by a replica of an earlier version (before 0011)."""
    with database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE thread_heads SET lock_key = NULL")


def test_a_head_written_without_its_lock_key_is_given_it_and_claimed(
    replicas: tuple[Database, Database],
) -> None:
    this, other = replicas
    _write(other, _create("old", "t-old"))
    _forget_lock_keys(other)

    def claim(unit: UnitOfWork) -> tuple[str | None, bool]:
        run = unit.heads.first_claimable(now_us(), None, ())
        return None if run is None else run.run_id, _thread_held_elsewhere(this, "t-old")

    assert _write(this, claim) == ("old", True)
    with this.engine.connect() as connection:
        keys = connection.exec_driver_sql("SELECT lock_key FROM thread_heads").scalars().all()
    assert keys == [lock_key(scoped_key("default", "t-old"))]


def test_a_claim_never_takes_a_head_without_its_lock_key_unlocked(
    replicas: tuple[Database, Database],
) -> None:
    """Another replica changes the thread of a head that has no key yet: the claim must
    find the thread's lock taken, not claim past it."""
    this, other = replicas
    _write(other, _create("contended", "busy", created_at=1))
    _forget_lock_keys(other)

    assert _claim_while_held(this, other, "busy") is None


def test_a_change_that_may_not_wait_finds_its_threads_lock_taken(
    replicas: tuple[Database, Database],
) -> None:
    """A group's later member (see GroupWriter) gives way rather than wait for a lock."""
    this, other = replicas
    _write(this, _create("contended", "held"))

    def change_without_waiting(unit: UnitOfWork) -> str:
        unit.runs.wait_for_locks = False
        with other.engine.connect() as holder:
            holder.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(%(lock)s, %(key)s)",
                {"lock": int(Lock.THREAD), "key": lock_key(scoped_key("default", "held"))},
            )
            with pytest.raises(LockBusy):
                unit.runs.get_locked("contended")
            holder.rollback()
        run = unit.runs.get_locked("contended")  # free again
        assert run is not None
        return run.run_id

    assert _write(this, change_without_waiting) == "contended"
