"""The group-committing writer, on a real SQLite file and a real PostgreSQL database.

Units of work queued while the writer is busy share one commit; a refusal that
applied nothing stays private to its unit of work, and any failure after applying
changes undoes the group and reruns each member alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, create_engine, event, text

from runplane.server.errors import RunNotFound
from runplane.server.records import (
    Change,
    ChangeType,
    MultitaskStrategy,
    RetryPolicy,
    Run,
    RunFilter,
    RunStatus,
    SortOrder,
)
from runplane.server.store.database import Database
from runplane.server.store.dialects import dialect_of, normalize_url
from runplane.server.store.migrate import upgrade
from runplane.server.store.unit_of_work import LeaseRenewal, UnitOfWork
from tests.support.databases import fresh_postgres_database

MISSING = "00000000-0000-4000-8000-000000000000"


def _create(run_id: str) -> Callable[[UnitOfWork], str]:
    """Creates one run (no rules: a bare change), and says which thread committed it."""

    def work(unit: UnitOfWork) -> str:
        run = Run(run_id, "thread", "assistant", RunStatus.PENDING, MultitaskStrategy.ENQUEUE, 0, 0)
        unit.apply([Change(ChangeType.CREATED, run)])
        return threading.current_thread().name

    return work


def _refuse_before_writing(unit: UnitOfWork) -> str:
    if unit.runs.get(MISSING) is None:
        raise RunNotFound(MISSING)
    return "found"


def _refuse_after_writing(unit: UnitOfWork) -> str:
    _create("half-done")(unit)
    raise RunNotFound(MISSING)


def _blocker(release: threading.Event) -> Callable[[UnitOfWork], str]:
    def work(unit: UnitOfWork) -> str:
        release.wait(5)
        return "blocker"

    return work


def _stored(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return {row[0] for row in connection.exec_driver_sql("SELECT run_id FROM runs")}


def _logged(database: Database) -> list[tuple[int, str]]:
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT revision, run_id FROM run_events")
        return sorted((row[0], row[1]) for row in rows)


def _published(database: Database) -> list[str]:
    """Where the database's commit listener writes down what it was told."""
    told: list[str] = []
    database.on_commit(lambda changes: told.extend(change.run.run_id for change in changes))
    return told


async def _run_group(
    database: Database, works: list[Callable[[UnitOfWork], str]]
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
    outcomes = asyncio.run(
        _run_group(database, [_create("a"), _refuse_before_writing, _create("b")])
    )
    assert outcomes[0] == outcomes[2] == "runplane-db-write"
    assert isinstance(outcomes[1], RunNotFound)
    assert _stored(database) == {"a", "b"}
    assert _logged(database) == [(1, "a"), (2, "b")]
    assert told == ["a", "b"]


def test_refusal_after_writing_is_undone_and_the_others_rerun_alone(database: Database) -> None:
    told = _published(database)
    outcomes = asyncio.run(
        _run_group(database, [_create("a"), _refuse_after_writing, _create("b"), _create("a")])
    )
    assert outcomes[0] == outcomes[2] == "runplane-db-write"
    assert isinstance(outcomes[1], RunNotFound)
    assert isinstance(outcomes[3], Exception)  # duplicate key: only its own call fails
    assert _stored(database) == {"a", "b"}
    assert _logged(database) == [(1, "a"), (2, "b")]  # the undone group left no gap
    assert told == ["a", "b"]  # nothing rolled back is ever published


@pytest.mark.timeout(60)
def test_many_queued_writes_all_commit(database: Database) -> None:
    run_ids = [f"n{i:04d}" for i in range(500)]

    async def write_all() -> list[str]:
        return await asyncio.gather(*(database.write(_create(run_id)) for run_id in run_ids))

    asyncio.run(write_all())
    assert _stored(database) == set(run_ids)
    assert sorted(run_id for _, run_id in _logged(database)) == run_ids
    assert [revision for revision, _ in _logged(database)] == list(range(1, 501))


def test_the_writer_keeps_its_connection_from_group_to_group(database: Database) -> None:
    checkouts: list[object] = []
    event.listen(database.engine, "checkout", lambda *_: checkouts.append(None))

    async def one_by_one() -> None:
        for index in range(5):
            await database.write(_create(f"k{index}"))

    asyncio.run(one_by_one())
    # Five groups, one after another: the first may check a connection out, no later one.
    assert len(checkouts) <= 1
    assert _stored(database) == {f"k{index}" for index in range(5)}


def _log_revision(unit: UnitOfWork) -> str:
    return str(unit.log.state().revision)


def _counter(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT revision FROM store_state").scalar_one())


def test_a_member_reading_the_log_sees_the_members_before_it(database: Database) -> None:
    """A group hands out its revisions itself and sends its events at the end: a member
    that reads the log's state in between still sees the revisions taken before it."""
    outcomes = asyncio.run(
        _run_group(database, [_create("a"), _create("b"), _log_revision, _create("c")])
    )
    assert outcomes == ["runplane-db-write", "runplane-db-write", "2", "runplane-db-write"]
    assert _logged(database) == [(1, "a"), (2, "b"), (3, "c")]
    assert _counter(database) == 3


def _fail_after_writing(unit: UnitOfWork) -> str:
    run = Run("broken", "its-own", "assistant", RunStatus.PENDING, MultitaskStrategy.ENQUEUE, 0, 0)
    unit.apply([Change(ChangeType.CREATED, run)])  # the first run of its thread: a head
    raise ValueError("a bug, after writing")


def _heads(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return {row[0] for row in connection.exec_driver_sql("SELECT run_id FROM thread_heads")}


def test_a_failed_transaction_leaves_nothing_for_later_ones_to_send(database: Database) -> None:
    """The thread head of a run created by a transaction that failed is held, never sent:
    not by the writer's next transaction, nor by reads on the same connections."""

    async def scenario() -> list[str | BaseException]:
        outcomes = await _run_group(database, [_create("a"), _fail_after_writing])
        for _ in range(40):  # every pooled connection, in turn
            await database.read(lambda unit: unit.runs.get(MISSING))
        outcomes.append(await database.write(_create("b")))
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == outcomes[2] == "runplane-db-write"
    assert isinstance(outcomes[1], ValueError)
    assert _stored(database) == {"a", "b"}
    assert _heads(database) == {"a"}  # b waits behind a on their thread


def _claimed(run_id: str) -> Callable[[UnitOfWork], str]:
    """A RUNNING run held by worker "w", its lease at 1."""

    def work(unit: UnitOfWork) -> str:
        run = Run(run_id, "thread", "assistant", RunStatus.RUNNING, MultitaskStrategy.ENQUEUE, 0, 0)
        run.worker_id, run.lease_expires_at = "w", 1
        unit.apply([Change(ChangeType.CREATED, run)])
        return "claimed"

    return work


def _renew(run_id: str, until: int, then_refuse: bool = False) -> Callable[[UnitOfWork], str]:
    def work(unit: UnitOfWork) -> str:
        assert run_id in unit.renew_leases([LeaseRenewal(run_id, "default", "w", until)])
        if then_refuse:
            raise RunNotFound(MISSING)
        return "renewed"

    return work


def _lease(database: Database, run_id: str) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                f"SELECT lease_expires_at_us FROM runs WHERE run_id = '{run_id}'"
            ).scalar_one()
        )


def test_a_renewal_is_published_apart_from_changes_and_undone_with_its_group(
    database: Database,
) -> None:
    """A lease renewal writes without a revision: it is told to renewal listeners, not
    commit listeners, and a refusal after it undoes the group like any write."""
    asyncio.run(database.write(_claimed("r")))
    told = _published(database)
    renewed: list[tuple[str, int | None]] = []
    database.on_renewal(lambda runs: renewed.extend((r.run_id, r.lease_expires_at) for r in runs))
    outcomes = asyncio.run(
        _run_group(database, [_create("a"), _renew("r", 500), _renew("r", 999, then_refuse=True)])
    )
    assert outcomes[:2] == ["runplane-db-write", "renewed"]
    assert isinstance(outcomes[2], RunNotFound)
    assert _lease(database, "r") == 500
    assert renewed == [("r", 500)]  # the undone renewal is never told
    assert told == ["a"]
    assert [revision for revision, _ in _logged(database)] == [1, 2]  # renewals take none


# Values a run's JSON documents and columns may hold that a row's way into the database
# could mangle: unicode, escapes, numbers at the edges of their types, empty and nested
# documents, SQL NULL beside JSON null.
_AWKWARD = {
    "text": 'é ☃ 𝄞 "quoted" \\ back\\slash \n new line',
    "big": 2**63 - 1,
    "negative": -(2**53),
    "float": 0.1,
    "tiny": 5e-324,
    "true": True,
    "null": None,
    "empty": {},
    "list": [1, "two", [3.5], {"four": None}],
    "nested": {"a": {"b": {"c": ["deep"]}}},
}


def _awkward_runs(unit: UnitOfWork, count: int) -> list[Run]:
    """`count` runs created together (one group's rows go in one statement each), each
    with its own awkward values, ids the store made and some fields left unset."""
    runs = [
        Run(
            unit.runs.new_id(),
            f"thread-{i}",
            "assistant ☃",
            RunStatus.PENDING,
            MultitaskStrategy.ENQUEUE,
            1_700_000_000_000_000 + i,
            1_700_000_000_000_000 + i,
            metadata={**_AWKWARD, "index": i},
            kwargs={"input": _AWKWARD, "i": i},
            timeout=None if i % 2 else 30_000_000,
            start_after=None if i % 3 else 1_800_000_000_000_000,
            request_id=None if i % 2 else f"request-{i}",
            trace_context={}
            if i % 2
            else {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
            retry_policy=None
            if i % 2
            else RetryPolicy(max_attempts=3, initial_backoff=1_000, backoff_coefficient=1.5),
            priority=i % 10,
        )
        for i in range(count)
    ]
    return unit.apply([Change(ChangeType.CREATED, run) for run in runs])


def test_runs_created_together_read_back_exactly(database: Database) -> None:
    created = asyncio.run(database.write(lambda unit: _awkward_runs(unit, 12)))

    def read_back(unit: UnitOfWork) -> tuple[list[Run | None], list[Run], list[Run]]:
        stored = [unit.runs.get(run.run_id) for run in created]
        logged = [event.run for event in unit.log.read_after(0, 100).events]
        found = unit.runs.list_page(
            RunFilter(metadata={"index": 7, "nested": _AWKWARD["nested"]}, namespaces=None),
            SortOrder.ASC,
            None,
            10,
        )
        return stored, logged, found

    stored, logged, found = asyncio.run(database.read(read_back, snapshot=True))
    assert stored == created
    assert logged == created
    assert [run.run_id for run in found] == [created[7].run_id]


def _claim_and_report(unit: UnitOfWork, created: list[Run]) -> list[Run]:
    """In one transaction: a claim of every run, then a report on every other one, which
    changes it again before anything is read (a change of metadata would read its index)."""
    claims = []
    for i, run in enumerate(created):
        running = dataclasses.replace(
            run,
            status=RunStatus.RUNNING,
            attempt=1,
            worker_id=f"worker ☃ {i}",
            lease_expires_at=1_900_000_000_000_000 + i,
            started_at=1_800_000_000_000_000 + i,
            result={**_AWKWARD, "claimed": i},
        )
        claims.append(Change(ChangeType.UPDATED, running, previous=run))
    claimed = unit.apply(claims)
    reports = [
        Change(
            ChangeType.UPDATED,
            dataclasses.replace(run, result={"output": _AWKWARD, "i": i}, error="half ☃ done"),
            previous=run,
        )
        for i, run in enumerate(claimed)
        if i % 2 == 0
    ]
    reported = {run.run_id: run for run in unit.apply(reports)}
    return [reported.get(run.run_id, run) for run in claimed]


def test_runs_changed_together_read_back_exactly(database: Database) -> None:
    """The rows of a transaction's changes wait, like its events, and go together: each
    run's row once however often it changed, its last values winning."""
    created = asyncio.run(database.write(lambda unit: _awkward_runs(unit, 12)))
    changed = asyncio.run(database.write(lambda unit: _claim_and_report(unit, created)))

    def read_back(unit: UnitOfWork) -> tuple[list[Run | None], list[Run]]:
        stored = [unit.runs.get(run.run_id) for run in created]
        return stored, [event.run for event in unit.log.read_after(0, 100).events]

    stored, logged = asyncio.run(database.read(read_back, snapshot=True))
    assert stored == changed
    assert len(logged) == 12 + 12 + 6
    assert logged[-6:] == changed[::2]
    assert [run.worker_id for run in logged[12:24]] == [f"worker ☃ {i}" for i in range(12)]
    with database.engine.connect() as connection:
        heads = connection.exec_driver_sql("SELECT run_id, state FROM thread_heads").all()
    assert sorted(heads) == sorted((run.run_id, "running") for run in created)


def test_a_run_created_and_changed_in_one_transaction_reads_back_changed(
    database: Database,
) -> None:
    """A run whose row is held for its INSERT and then changed: the change is written
    after the row, not beside it in one statement, where it would find no row."""

    def create_then_claim(unit: UnitOfWork) -> Run:
        (created,) = _awkward_runs(unit, 1)
        running = dataclasses.replace(created, status=RunStatus.RUNNING, worker_id="w")
        return unit.apply([Change(ChangeType.UPDATED, running, previous=created)])[0]

    claimed = asyncio.run(database.write(create_then_claim))
    stored = asyncio.run(database.read(lambda unit: unit.runs.get(claimed.run_id)))
    assert stored == claimed


@contextlib.contextmanager
def _thread_held_by_another_replica() -> Iterator[tuple[Database, Connection]]:
    """A database, and another replica's transaction that holds thread ("ns", "t")."""
    with fresh_postgres_database() as url:
        database = Database(url)
        upgrade(database.engine)
        replica = create_engine(normalize_url(url))
        try:
            with replica.connect() as theirs:
                theirs.begin()
                UnitOfWork(theirs, dialect_of(normalize_url(url))).runs.lock_thread("ns", "t")
                yield database, theirs
        finally:
            replica.dispose()
            database.dispose()


async def _until_a_session_waits_for_a_lock(connection: Connection) -> None:
    """Until some session waits for an advisory lock (however slow its start)."""
    waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    deadline = time.monotonic() + 30
    while not connection.execute(waiting).scalar_one():
        assert time.monotonic() < deadline, "no session came to wait for the lock"
        await asyncio.sleep(0.01)


@pytest.mark.postgres
def test_a_write_postgresql_undoes_to_break_a_deadlock_runs_again() -> None:
    """This writer takes the revision counter and then waits for a thread lock that
    another replica holds while it waits for the counter. PostgreSQL undoes one of the
    two; undone, the write runs again once the other has committed."""
    with _thread_held_by_another_replica() as (database, theirs):

        def create_then_lock(unit: UnitOfWork) -> str:
            _create("contended")(unit)  # holds the counter from here to commit
            unit.runs.lock_thread("ns", "t")
            return "written"

        async def scenario() -> str:
            write = asyncio.ensure_future(database.write(create_then_lock))
            await _until_a_session_waits_for_a_lock(theirs)
            # PostgreSQL's deadlock check runs a second after a session starts waiting:
            # the writer's must come well before theirs.
            await asyncio.sleep(0.3)
            # This waits for the counter: a deadlock, which the writer's side
            # detects first, having waited longer.
            await asyncio.to_thread(
                theirs.exec_driver_sql, "UPDATE store_state SET revision = revision"
            )
            await asyncio.to_thread(theirs.commit)
            return await write

        assert asyncio.run(scenario()) == "written"
        assert _stored(database) == {"contended"}


@pytest.mark.postgres
def test_a_later_member_that_finds_a_lock_taken_goes_first_in_the_next_group() -> None:
    """Another replica holds a thread's lock. The group's first member creates a run and
    so holds the revision counter; the second needs the thread. Waiting there would hold
    the counter from every other writer, the lock's holder included (a deadlock if it
    wants the counter): it gives way instead, the first member commits at once, and the
    second waits for the lock as the first member of the next group."""
    with _thread_held_by_another_replica() as (database, theirs):

        def lock_then_create(unit: UnitOfWork) -> str:
            unit.runs.lock_thread("ns", "t")
            return _create("waited")(unit)

        async def scenario() -> list[object]:
            release = threading.Event()
            blocker = asyncio.ensure_future(database.write(_blocker(release)))
            await asyncio.sleep(0.1)  # the writer is busy: the next two queue up
            first = asyncio.ensure_future(database.write(_create("first")))
            second = asyncio.ensure_future(database.write(lock_then_create))
            await asyncio.sleep(0.1)
            release.set()
            await blocker
            # Committed while the thread's lock is still held elsewhere.
            done = await asyncio.wait_for(first, timeout=10)
            assert not second.done()
            await asyncio.to_thread(theirs.commit)
            return [done, await second]

        assert asyncio.run(scenario()) == ["runplane-db-write"] * 2
        assert _stored(database) == {"first", "waited"}
