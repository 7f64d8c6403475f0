"""The claim path's, the sweeper's and the listings' queries are index range reads,
whatever the backlog (or another tenant's runs), and on PostgreSQL before any ANALYZE:
no statistics can turn them into scans.

Timings do not belong in tests; query plans do. Each database gets a backlog written
at schema 0003 (100,000 runs: PENDING runs queued on 60,000 threads of 20 assistants
in 3 namespaces with every priority, RUNNING runs with leases and timeouts, finished
ones), then migrated to the head (0006 finds the thread heads). Autovacuum is off for
the tables, so PostgreSQL plans with no column statistics at all. Every statement that
the real store methods run and that reads a table is explained; on PostgreSQL, as the
generic plan that a prepared statement may settle on, too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from runplane.server.records import (
    Change,
    ChangeType,
    PageCursor,
    RunFilter,
    RunStatus,
    SortOrder,
    now_us,
)
from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade
from runplane.server.store.run_store import RunStore
from runplane.server.store.unit_of_work import LeaseRenewal, UnitOfWork
from tests.support.databases import database_url

RUNS = 100_000
THREADS = 60_000
HOUR_US = 3600 * 10**6

# Run i: thread i % THREADS, so the first THREADS runs are heads and the rest queue
# behind them; 1 in 10 heads RUNNING, 1 in 50 runs finished, 1 in 7 delayed an hour.
_BACKLOG = """
INSERT INTO runs (run_id, thread_id, assistant_id, status, multitask_strategy, metadata,
    kwargs, created_at_us, updated_at_us, revision, create_revision, attempt, error,
    cancel_reason, worker_id, lease_expires_at_us, timeout_us, started_at_us,
    start_after_us, namespace, priority, ended_at_us)
SELECT 'run-' || i, 'thread-' || (i % {threads}), 'agent-' || (i % 20),
    CASE WHEN i % 50 = 0 THEN 'success'
         WHEN i < {threads} AND i % 10 = 1 THEN 'running' ELSE 'pending' END,
    'enqueue', {metadata}, '{}', :at + i, :at + i, i, i, 0, '', '',
    CASE WHEN i < {threads} AND i % 10 = 1 THEN 'worker' ELSE '' END,
    CASE WHEN i < {threads} AND i % 10 = 1 THEN :now + {hour} END,
    CASE WHEN i % 3 = 0 THEN {hour} END,
    CASE WHEN i < {threads} AND i % 10 = 1 THEN :now END,
    CASE WHEN i % 7 = 0 THEN :now + {hour} END,
    'ns-' || (i % 3), i % 10, CASE WHEN i % 50 = 0 THEN :at + i END
FROM {numbers}
""".replace("{threads}", str(THREADS)).replace("{hour}", str(HOUR_US))
# Every run's metadata names one of TEAMS teams (0008 indexes it).
TEAMS = 50
_TEAM = f"'{{\"team\":\"team-' || (i % {TEAMS}) || '\"}}'"
_METADATA = {"sqlite": _TEAM, "postgres": f"CAST({_TEAM} AS jsonb)"}
_NUMBERS = {
    "sqlite": "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
    "WHERE i < {runs}) SELECT i FROM n)",
    "postgres": "generate_series(1, {runs}) AS n(i)",
}


@contextmanager
def _loaded(backend: str, folder: Path, runs: int) -> Iterator[Database]:
    """A database holding the first `runs` runs of the backlog, never analyzed."""
    with database_url(backend, folder) as url:
        database = Database(url)
        try:
            upgrade(database.engine, "0003")
            with database.engine.begin() as connection:
                if backend == "postgres":
                    connection.execute(text("ALTER TABLE runs SET (autovacuum_enabled = off)"))
                at = now_us() - 10 * HOUR_US
                numbers = _NUMBERS[backend].replace("{runs}", str(runs))
                statement = _BACKLOG.replace("{numbers}", numbers).replace(
                    "{metadata}", _METADATA[backend]
                )
                connection.execute(text(statement), {"at": at, "now": now_us()})
            upgrade(database.engine)
            if backend == "postgres":
                with database.engine.begin() as connection:
                    for table in ("thread_heads", "run_metadata"):
                        connection.execute(
                            text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
                        )
            yield database
            if backend == "postgres":
                assert _never_analyzed(database)
        finally:
            database.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backlog(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Database]]:
    backend = str(request.param)
    with _loaded(backend, tmp_path_factory.mktemp("plans"), RUNS) as database:
        yield backend, database


def _never_analyzed(database: Database) -> bool:
    with database.engine.connect() as connection:
        analyzed = connection.execute(
            text(
                "SELECT count(*) FROM pg_stats "
                "WHERE tablename IN ('runs', 'thread_heads', 'run_metadata')"
            )
        ).scalar_one()
    return bool(analyzed == 0)


Plan = dict[str, Any]


def _plans_of(
    backlog: tuple[str, Database], use: Callable[[UnitOfWork], object]
) -> list[tuple[str, Any]]:
    """(statement, plan) of every SELECT, UPDATE, DELETE and WITH (held writes sent as
    one) that `use(unit)` runs, in a transaction that is rolled back."""
    backend, database = backlog
    plans: list[tuple[str, Any]] = []
    with database.engine.connect() as connection:

        @event.listens_for(connection, "before_cursor_execute")
        def explain(
            conn: Connection, cursor: object, statement: str, params: Any, *rest: object
        ) -> None:
            if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
                return
            _context, executemany = rest
            if executemany:  # one plan serves every parameter set
                params = params[0]
            if backend == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                plans.append((statement, [(row[0], row[1], str(row[3])) for row in rows]))
            else:
                found = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params)
                plan = _plan_of(found.scalar_one())
                plans.append((statement, plan))
                if any("Relation Name" in node for node in _nodes(plan)):
                    generic = _generic_plan(conn, statement, params)
                    plans.append((f"{statement} [generic]", generic))

        with connection.begin() as transaction:
            use(UnitOfWork(connection, database._dialect))
            transaction.rollback()
    assert plans
    return plans


def _plan_of(document: Any) -> Plan:
    plan = document if isinstance(document, list) else json.loads(document)
    return dict(plan[0]["Plan"])


_PARAMETER = re.compile(r"%\((\w+)\)s")


# What psycopg sends a Python value as; the server infers the rest from the statement.
_SENT_AS = {bool: "boolean", int: "bigint", float: "double precision"}


def _generic_plan(conn: Connection, statement: str, params: dict[str, Any]) -> Plan:
    """The plan PostgreSQL may settle on once psycopg prepares the statement (its fifth
    run): the generic plan, made for any parameter values, without the values that
    would tell it how few rows one thread or one run has."""
    names = list(dict.fromkeys(_PARAMETER.findall(statement)))
    numbered = _PARAMETER.sub(lambda name: f"${names.index(name[1]) + 1}", statement)
    types = ", ".join(_SENT_AS.get(type(params[name]), "unknown") for name in names)
    nulls = ", ".join(["NULL"] * len(names))
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.exec_driver_sql(
        f"PREPARE generic_probe{f'({types})' if names else ''} AS " + numbered.replace("%%", "%")
    )
    try:
        execute = f"EXECUTE generic_probe{f'({nulls})' if names else ''}"
        found = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + execute)
        return _plan_of(found.scalar_one())
    finally:
        conn.exec_driver_sql("DEALLOCATE generic_probe")
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = auto")


def _nodes(plan: Plan) -> Iterator[Plan]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _reads_table(line: str) -> bool:
    tables = ("runs", "thread_heads", "run_metadata")
    return line.startswith(("SCAN", "SEARCH")) and any(table in line for table in tables)


def _fallen_due_range(plan: Plan) -> bool:
    """A read of the delayed heads that fell due: a range of the delayed index that
    ends at now, which holds only the heads that fell due since the last sweep."""
    bitmap = plan.get("Plans", [{}])[0]
    return (
        plan["Node Type"] == "Bitmap Heap Scan"
        and bitmap.get("Index Name") == "ix_thread_heads_delayed"
        and "due_us <=" in bitmap.get("Index Cond", "")
    )


def _by_keys(plan: Plan) -> bool:
    """A read of the rows whose primary keys the statement lists (of a run's metadata
    entries: the run id that leads their key)."""
    bitmap = plan.get("Plans", [{}])[0]
    return bool(
        plan["Node Type"] == "Bitmap Heap Scan"
        and bitmap.get("Index Name") in ("runs_pkey", "run_metadata_pkey")
    )


def _one_thread(plan: Plan) -> bool:
    """A read of one thread's runs, found by the thread's key."""
    bitmap = plan.get("Plans", [{}])[0]
    condition = bitmap.get("Index Cond", "")
    return plan["Node Type"] == "Bitmap Heap Scan" and all(
        f"{column})::text = " in condition for column in ("thread_id", "namespace")
    )


def _bounded(plan: Plan) -> bool:
    """Whether every table read under `plan` stops at a LIMIT, or is the fallen-due range."""
    if plan["Node Type"] == "Limit" or _fallen_due_range(plan):
        return True
    if "Relation Name" in plan:
        return False
    return all(_bounded(child) for child in plan.get("Plans", []))


def _assert_index_reads(backend: str, plans: list[tuple[str, Any]], *indexes: str) -> None:
    """Every read of runs and thread_heads is a range of an index, in the order asked
    for; a sort only orders what bounded reads returned (the claim's union of LIMITed
    branches, the fallen-due heads). And each named index is used."""
    used: set[str] = set()
    for statement, plan in plans:
        if backend == "sqlite":
            for _, _, line in plan:
                if _reads_table(line):
                    # A table WITHOUT ROWID is its primary key's index.
                    assert " INDEX " in line or " PRIMARY KEY " in line, (statement, plan)
                    used.add(line.split("INDEX ")[-1].split(" ")[0])
            for node, parent, line in plan:
                if "TEMP B-TREE" in line:  # beside a subquery's output, not a table read
                    siblings = [other for _, up, other in plan if up == parent]
                    assert not any(map(_reads_table, siblings)), (statement, plan, node)
        else:
            for node in _nodes(plan):
                assert node["Node Type"] != "Seq Scan", (statement, plan)
                if node["Node Type"] == "Bitmap Heap Scan":
                    assert _fallen_due_range(node) or _by_keys(node) or _one_thread(node), (
                        statement,
                        plan,
                    )
                # A read that names a thread seeks it: it never filters a wider range.
                assert "thread_id" not in node.get("Filter", ""), (statement, plan)
                if "Index Name" in node:
                    used.add(node["Index Name"])
                if node["Node Type"] in ("Sort", "Incremental Sort"):
                    assert _bounded(node), (statement, plan)
    assert set(indexes) <= used, (indexes, used, plans)


def _indexes_read(backend: str, plans: list[tuple[str, Any]]) -> set[str]:
    """The indexes an aggregate reads, checking that it reads tables through nothing
    else: it counts what matches, so it may group the rows in a hash or a sort, but
    never scans a table."""
    used: set[str] = set()
    for statement, plan in plans:
        if backend == "sqlite":
            for _, _, line in plan:
                if _reads_table(line):
                    assert " INDEX " in line, (statement, plan)
                    used.add(line.split("INDEX ")[-1].split(" ")[0])
        else:
            for node in _nodes(plan):
                assert node["Node Type"] != "Seq Scan", (statement, plan)
                if "Index Name" in node:
                    used.add(node["Index Name"])
    return used


def test_the_migration_found_a_head_for_every_thread(backlog: tuple[str, Database]) -> None:
    with backlog[1].engine.connect() as connection:
        threads = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT DISTINCT namespace, thread_id FROM runs "
                "WHERE status IN ('pending', 'running')) AS inflight"
            )
        ).scalar_one()
        rows = connection.execute(text("SELECT state, count(*) FROM thread_heads GROUP BY state"))
        states = {state: count for state, count in rows}
    assert sum(states.values()) == threads > THREADS / 2
    assert states["ready"] > THREADS / 2
    assert states["running"] > 0
    assert states["delayed"] > 0


@pytest.mark.parametrize(
    ("namespaces", "assistants", "indexes"),
    [
        (None, (), ["ix_thread_heads_ready", "ix_thread_heads_delayed"]),
        (None, ("agent-3",), ["ix_thread_heads_ready_assistant"]),
        (None, ("agent-3", "agent-4"), ["ix_thread_heads_ready_assistant"]),
        (frozenset({"ns-1"}), (), ["ix_thread_heads_ready_namespace"]),
        (
            frozenset({"ns-1", "ns-2"}),
            ("agent-3",),
            ["ix_thread_heads_ready_queue"],
        ),
    ],
)
def test_a_claim_reads_ranges_of_the_ready_heads(
    backlog: tuple[str, Database],
    namespaces: frozenset[str] | None,
    assistants: tuple[str, ...],
    indexes: list[str],
) -> None:
    def claim_look(unit: UnitOfWork) -> None:
        now = now_us()
        assert unit.heads.look(now, namespaces, assistants)[0]  # a worker's look
        assert unit.heads.first_claimable(now, namespaces, assistants)  # the claim

    plans = _plans_of(backlog, claim_look)
    _assert_index_reads(backlog[0], plans, *indexes)


def test_a_worker_with_nothing_to_claim_reads_no_backlog(backlog: tuple[str, Database]) -> None:
    plans = _plans_of(
        backlog, lambda unit: unit.heads.look(now_us(), frozenset({"ns-0"}), ("nobody",))
    )
    _assert_index_reads(backlog[0], plans, "ix_thread_heads_ready_queue")


def _claim_then_complete(unit: UnitOfWork) -> None:
    now = now_us()
    run = unit.heads.first_claimable(now, None, ("agent-5",))
    assert run is not None
    running = replace(run, status=RunStatus.RUNNING, worker_id="w", lease_expires_at=now)
    unit.apply([Change(ChangeType.UPDATED, running, previous=run)])
    done = replace(running, status=RunStatus.SUCCESS, lease_expires_at=None)
    unit.apply([Change(ChangeType.UPDATED, done, previous=running)])


def test_a_claim_and_a_completion_keep_the_heads_by_index(
    backlog: tuple[str, Database],
) -> None:
    """The claim's read of its run (with, on PostgreSQL, the re-check under its thread's
    lock), the claim's update of its head, and a completion handing the thread to its
    next run."""
    plans = _plans_of(backlog, _claim_then_complete)
    _assert_index_reads(backlog[0], plans, "ix_runs_thread_inflight")


@pytest.fixture(scope="module", params=[300, 3000, 30000])
def young(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Database]]:
    """A young PostgreSQL database, whose indexes are one page or a few."""
    with _loaded("postgres", tmp_path_factory.mktemp("young"), request.param) as database:
        yield "postgres", database


@pytest.mark.postgres
def test_plans_made_while_the_tables_are_small_still_seek_the_thread(
    young: tuple[str, Database],
) -> None:
    """A generic plan is made once, by a connection's fifth run of a statement, and kept
    until the tables are analyzed again, however they grow meanwhile. Made on a young
    database, a completion's (which drops the head of the thread it ends) still seeks
    the thread, rather than reading every inflight run of its namespace."""
    _assert_index_reads("postgres", _plans_of(young, _claim_then_complete))


def test_the_sweeper_reads_leases_and_timeouts_by_index(backlog: tuple[str, Database]) -> None:
    def sweep(unit: UnitOfWork) -> None:
        now = now_us() + 2 * HOUR_US  # every lease and timeout of the backlog has passed
        unit.heads.promote_due(now, 100)
        assert unit.runs.stuck(now, 10)

    plans = _plans_of(backlog, sweep)
    _assert_index_reads(
        backlog[0], plans, "ix_runs_lease", "ix_runs_timeout", "ix_thread_heads_delayed"
    )


def test_retention_reads_ended_runs_by_index_and_deletes_them_by_key(
    backlog: tuple[str, Database],
) -> None:
    """A batch of --run-retention: the runs that ended longest ago, then their deletes
    (the run, its metadata entries, its thread's head)."""

    def expire(unit: UnitOfWork) -> None:
        assert unit.runs.try_lock_retention()
        expired = unit.runs.ended_before(now_us(), 100)
        assert [run.run_id for run in expired] == [f"run-{i}" for i in range(50, 5001, 50)]
        unit.apply([Change(ChangeType.DELETED, run) for run in expired])

    plans = _plans_of(backlog, expire)
    _assert_index_reads(backlog[0], plans, "ix_runs_ended")


def test_a_bulk_cancel_of_a_thread_reads_and_hands_over_by_index(
    backlog: tuple[str, Database],
) -> None:
    """CancelRuns of one thread: its inflight runs (read again under the thread's lock
    on PostgreSQL), then the cancellation, which ends the thread's head."""

    def cancel_thread(unit: UnitOfWork) -> None:
        run_filter = RunFilter(thread_id="thread-7", namespaces=frozenset({"ns-1"}))
        runs = unit.runs.inflight_matching(run_filter, 5001)
        assert len(runs) == 2
        at = now_us()
        unit.apply(
            [
                Change(
                    ChangeType.UPDATED,
                    replace(run, status=RunStatus.INTERRUPTED, ended_at=at),
                    previous=run,
                )
                for run in runs
            ]
        )

    plans = _plans_of(backlog, cancel_thread)
    _assert_index_reads(backlog[0], plans)  # ix_runs_thread, or its inflight part


def test_heartbeats_read_and_update_their_rows_by_key(backlog: tuple[str, Database]) -> None:
    """A batch of heartbeats: the namespaces of its runs (for the callers' access), then
    the renewals."""
    until = now_us() + HOUR_US
    ids = range(1, 200, 10)
    renewals = [LeaseRenewal(f"run-{i}", f"ns-{i % 3}", "worker", until) for i in ids]

    def heartbeats(unit: UnitOfWork) -> None:
        assert len(unit.runs.namespaces_of([renewal.run_id for renewal in renewals])) == len(ids)
        assert unit.renew_leases(renewals)

    plans = _plans_of(backlog, heartbeats)
    _assert_index_reads(backlog[0], plans)
    custom = [statement for statement, _ in plans if not statement.endswith("[generic]")]
    assert [statement.lstrip().split()[0].upper() for statement in custom] == [
        "SELECT",
        "UPDATE",
    ]
    for _, plan in plans:
        if backlog[0] == "sqlite":
            assert [line for _, _, line in plan] == [
                "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (run_id=?)"
            ]
        else:  # an index scan or a bitmap of the primary key, for the ids given
            indexes = {node.get("Index Name") for node in _nodes(plan)}
            assert indexes == {None, "runs_pkey"}, plan


@pytest.mark.parametrize(
    "namespaces", [None, frozenset({"ns-1"}), frozenset({"ns-1", "ns-2"})], ids=str
)
@pytest.mark.parametrize("order", list(SortOrder))
def test_metadata_listings_read_their_entry_in_list_order(
    backlog: tuple[str, Database], namespaces: frozenset[str] | None, order: SortOrder
) -> None:
    """The first page of runs whose metadata names a team (2% of the backlog) is a range
    of the metadata index that stops at the page, then the runs by key; and the pages
    hold the runs a scan would find, in list order."""
    run_filter = RunFilter(metadata={"team": "team-7"}, namespaces=namespaces)
    found: list[list[str]] = []

    def first_page(unit: UnitOfWork) -> None:
        found.append([run.run_id for run in unit.runs.list_page(run_filter, order, None, 51)])

    def next_page(unit: UnitOfWork) -> None:
        last = unit.runs.get(found[0][-1])
        assert last is not None
        after = PageCursor(last.created_at, last.run_id)
        found.append([run.run_id for run in unit.runs.list_page(run_filter, order, after, 51)])

    _assert_index_reads(backlog[0], _plans_of(backlog, first_page), "ix_run_metadata_entry")
    next_plans = _plans_of(backlog, next_page)
    if backlog[0] == "sqlite":
        _assert_index_reads(backlog[0], next_plans, "ix_run_metadata_entry")
    else:
        # Without statistics PostgreSQL guesses that fewer of the entry's runs follow the
        # cursor than a page holds, so it reads them all (by the index, from the cursor
        # on) and sorts them; once ANALYZEd, it reads on in order.
        for _, plan in next_plans:
            assert all(node["Node Type"] != "Seq Scan" for node in _nodes(plan)), plan
    created = sorted(
        (
            i
            for i in range(1, RUNS + 1)
            if i % TEAMS == 7 and (namespaces is None or f"ns-{i % 3}" in namespaces)
        ),
        reverse=order is SortOrder.DESC,
    )
    assert found == [[f"run-{i}" for i in created[:51]], [f"run-{i}" for i in created[51:102]]]


def _claimable_by_hand(database: Database, now: int) -> dict[tuple[str, str], tuple[int, int]]:
    """(namespace, assistant) -> (claimable runs, earliest due), worked out from every
    row of runs: each thread's first inflight run, if PENDING and due by `now`."""
    with database.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT namespace, thread_id, assistant_id, status, created_at_us, "
                "start_after_us FROM runs WHERE status IN ('pending', 'running') "
                "ORDER BY create_revision"
            )
        ).all()
    heads: dict[tuple[str, str], Any] = {}
    for row in rows:
        heads.setdefault((row.namespace, row.thread_id), row)
    queues: dict[tuple[str, str], tuple[int, int]] = {}
    for head in heads.values():
        due = max(head.created_at_us, head.start_after_us or 0)
        if head.status == "pending" and due <= now:
            depth, oldest = queues.get((head.namespace, head.assistant_id), (0, due))
            queues[head.namespace, head.assistant_id] = (depth + 1, min(oldest, due))
    return queues


@pytest.mark.parametrize("namespaces", [None, frozenset({"ns-1"}), frozenset({"ns-0", "ns-2"})])
@pytest.mark.parametrize("later", [0, 2 * HOUR_US])
def test_stats_count_queues_and_inflight_runs_from_indexes(
    backlog: tuple[str, Database], namespaces: frozenset[str] | None, later: int
) -> None:
    """GetStats' reads: the claimable heads per queue (ready ones from the ready index,
    and, `later` an hour past the delayed heads' due time, the fallen-due ones from the
    delayed index), and inflight runs per namespace and status from the status index."""
    backend, database = backlog
    now = now_us() + later
    found: dict[str, Any] = {}

    def read_stats(unit: UnitOfWork) -> None:
        found["queues"] = unit.heads.queues(now, namespaces)
        found["runs"] = unit.runs.inflight_counts(namespaces)

    plans = _plans_of(backlog, read_stats)
    used = _indexes_read(backend, plans)
    # Partial indexes that hold only what is counted: ready heads (any of their indexes),
    # fallen-due heads; inflight runs, the inflight range of the status index, which
    # covers them (for some namespaces, their thread lines may serve).
    ready = {index for index in used if index.startswith("ix_thread_heads_ready")}
    inflight = used & {"ix_runs_status_queue", "ix_runs_thread_inflight"}
    assert len(ready) == len(inflight) == 1, plans
    assert used == {*ready, *inflight, "ix_thread_heads_delayed"}, plans
    if namespaces is None and backend == "sqlite":
        covered = "SEARCH runs USING COVERING INDEX ix_runs_status_queue (status=?)"
        assert any(line == covered for _, plan in plans for _, _, line in plan), plans
    elif namespaces is None:
        assert inflight == {"ix_runs_status_queue"}

    expected = {
        key: value
        for key, value in _claimable_by_hand(database, now).items()
        if namespaces is None or key[0] in namespaces
    }
    queues = {(q.namespace, q.assistant_id): (q.depth, q.oldest_due) for q in found["queues"]}
    assert queues == expected
    assert {namespace for namespace, _ in queues} == (namespaces or {"ns-0", "ns-1", "ns-2"})
    with database.engine.connect() as connection:
        counted = connection.execute(
            text(
                "SELECT namespace, status, count(*) FROM runs "
                "WHERE status IN ('pending', 'running') GROUP BY namespace, status"
            )
        ).all()
    assert [(c.namespace, c.status.value, c.count) for c in found["runs"]] == sorted(
        (namespace, status, count)
        for namespace, status, count in counted
        if namespaces is None or namespace in namespaces
    )


# Listings, on SQLite: its plans, with no statistics, are the same for any number of rows.
THREAD = "123e4567-e89b-42d3-a456-426614174000"
SHOP = frozenset({"shop"})


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        upgrade(database.engine)
        yield database
    finally:
        database.dispose()


def _sqlite_plans_of(database: Database, use: Callable[[RunStore], object]) -> list[str]:
    """The query plan of every statement that `use(runs)` runs, one line each."""
    plans = _plans_of(("sqlite", database), lambda unit: use(unit.runs))
    return [" | ".join(line for _, _, line in plan) for _, plan in plans]


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
    "metadata in a namespace": (
        RunFilter(metadata={"team": "a", 'a"b': 1}, namespaces=SHOP),
        "SEARCH run_metadata USING COVERING INDEX ix_run_metadata_entry (entry=?) | SCAN",
    ),
    "metadata in every namespace": (
        RunFilter(metadata={"team": "a"}, assistant_id="agent", namespaces=None),
        "SEARCH run_metadata USING COVERING INDEX ix_run_metadata_entry (entry=?) | SCAN",
    ),
    "metadata on a thread": (
        RunFilter(metadata={"team": "a"}, thread_id=THREAD, namespaces=SHOP),
        "ix_runs_thread (thread_id=? AND namespace=?)",
    ),
}


@pytest.mark.parametrize("case", list(LISTINGS))
def test_a_listing_seeks_the_runs_it_shows(empty: Database, case: str) -> None:
    run_filter, expected = LISTINGS[case]
    plans = _sqlite_plans_of(
        empty, lambda runs: runs.list_page(run_filter, SortOrder.DESC, None, 51)
    )
    assert len(plans) == 1
    assert expected in plans[0], plans


def test_a_listing_of_several_namespaces_seeks_each(empty: Database) -> None:
    run_filter = RunFilter(namespaces=frozenset({"shop", "lab"}))
    plans = _sqlite_plans_of(
        empty, lambda runs: runs.list_page(run_filter, SortOrder.DESC, None, 51)
    )
    assert plans == ["SEARCH runs USING INDEX ix_runs_namespace_created (namespace=?)"] * 2


def test_a_thread_and_a_request_id_are_sought_within_their_namespace(empty: Database) -> None:
    plans = _sqlite_plans_of(
        empty,
        lambda runs: (
            runs.inflight_on_thread("shop", THREAD),
            runs.get_by_request_id("shop", "request-1"),
        ),
    )
    assert "ix_runs_thread (thread_id=? AND namespace=? AND status=?)" in plans[0], plans
    assert "ux_runs_namespace_request (namespace=? AND request_id=?)" in plans[1], plans


@pytest.mark.parametrize(
    "run_filter",
    [
        RunFilter(thread_id=THREAD, namespaces=SHOP),
        RunFilter(thread_id=THREAD, namespaces=None),
        RunFilter(assistant_id="agent", namespaces=SHOP),
        RunFilter(assistant_id="agent", namespaces=None),
        RunFilter(metadata={"team": "a"}, namespaces=frozenset({"shop", "lab"})),
    ],
    ids=["thread", "thread-anywhere", "assistant", "assistant-anywhere", "metadata"],
)
def test_a_bulk_cancel_seeks_its_runs(empty: Database, run_filter: RunFilter) -> None:
    """CancelRuns reads the thread's runs, the assistant's, or the inflight ones: never
    every run there is."""
    plans = _sqlite_plans_of(empty, lambda runs: runs.inflight_matching(run_filter, 5001))
    assert len(plans) == 1
    assert plans[0].startswith("SEARCH runs USING INDEX "), plans
    assert "SCAN" not in plans[0], plans


def test_postgresql_never_compiles_a_query(tmp_path: Path) -> None:
    """On a large table a prepared statement's generic plan may be guessed costly enough
    for PostgreSQL to compile it to machine code on every run (tens of milliseconds for a
    query that takes a tenth of one): the store's connections run with JIT off, and keep
    the session options their URL gives."""
    with database_url("postgres", tmp_path) as url:
        for given, timeout in ((url, "0"), (f"{url}?options=-c%20statement_timeout%3D7s", "7s")):
            database = Database(given)
            try:
                with database.engine.connect() as connection:
                    assert connection.exec_driver_sql("SHOW jit").scalar_one() == "off"
                    shown = connection.exec_driver_sql("SHOW statement_timeout").scalar_one()
                    assert shown == timeout
            finally:
                database.dispose()
