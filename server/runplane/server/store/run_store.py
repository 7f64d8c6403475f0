"""SQL over the runs table: the reads the rules need, the locks they take, and the row
writes of `UnitOfWork.apply`.

A `RunStore` works on the connection of one transaction that `Database` owns; the rules
reach it as `UnitOfWork.runs`. Reads return `records.Run` (through the field map in
`fields.py`); what differs between SQLite and PostgreSQL is asked of the `Dialect`.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Case,
    ColumnElement,
    Connection,
    Integer,
    Select,
    Text,
    Update,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from runplane.server.errors import RunAlreadyExists
from runplane.server.records import (
    INFLIGHT,
    Change,
    ChangeType,
    NamespaceSet,
    PageCursor,
    Run,
    RunCount,
    RunFilter,
    RunStatus,
    SortOrder,
)
from runplane.server.store import fields, held_rows, metadata_index
from runplane.server.store.dialects import Dialect, Lock, lock_key, scoped_key
from runplane.server.store.schema import INFLIGHT_PREDICATE, Base, RunMetadataRow, RunRow

_runs = Base.metadata.tables[RunRow.__tablename__]
_entries = Base.metadata.tables[RunMetadataRow.__tablename__]

_SELECT_RUN = select(*(_runs.c[column] for column in fields.COLUMNS))
# Hot statements are built once: SQLAlchemy then reuses their compiled form.
_GET_RUN = _SELECT_RUN.where(_runs.c.run_id == bindparam("run_id"))
_THREAD_OF = select(_runs.c.namespace, _runs.c.thread_id).where(
    _runs.c.run_id == bindparam("run_id")
)
_GET_BY_REQUEST = _SELECT_RUN.where(
    _runs.c.namespace == bindparam("namespace"), _runs.c.request_id == bindparam("request_id")
)
_INFLIGHT_ON_THREAD = _SELECT_RUN.where(
    _runs.c.namespace == bindparam("namespace"),
    _runs.c.thread_id == bindparam("thread_id"),
    _runs.c.status.in_([status.value for status in INFLIGHT]),
).order_by(_runs.c.create_revision)
# Inflight runs by status and namespace: two ranges of the status index, in its order.
_INFLIGHT_COUNTS = (
    select(_runs.c.namespace, _runs.c.status, func.count())
    .where(text(INFLIGHT_PREDICATE))
    .group_by(_runs.c.status, _runs.c.namespace)
)
_IN_NAMESPACES = _runs.c.namespace.in_(bindparam("namespaces", expanding=True))
_INSERT_RUN = insert(_runs)
_UPDATE_RUN = update(_runs).where(_runs.c.run_id == bindparam("key"))
_DELETE_RUN = delete(_runs).where(_runs.c.run_id == bindparam("run_id"))
_GET_RUN_FOR_CHANGE = _GET_RUN.with_for_update()
# PostgreSQL (migration 0010): lock a thread, then read one run for change, in one call.
_LOCK_RUN = fields.returned_runs(
    func.runplane_lock_run(
        cast(bindparam("lock"), Integer),
        cast(bindparam("key"), Integer),
        cast(bindparam("run_id"), Text),
        cast(bindparam("may_wait"), Boolean),
    )
)


class LockBusy(Exception):
    """A lock this transaction may not wait for is held by another (`RunStore.wait_for_locks`):
    nothing was written, and the work should run again where it may wait."""


# Only RUNNING runs have a lease or a timeout_at: each kind of stuck run is an ordered
# range read of its partial index, up to the limit (an OR of the two conditions, or a
# status condition, lets the planner pick a scan of the table).
_STUCK = union_all(
    *(
        # SQLite takes ORDER BY and LIMIT in a compound's members only inside subqueries.
        select(
            _SELECT_RUN.where(column < bindparam("now"))
            .order_by(column)
            .limit(bindparam("limit"))
            .subquery()
        )
        for column in (_runs.c.lease_expires_at_us, _runs.c.timeout_at_us)
    )
)
_STILL_STUCK = _GET_RUN_FOR_CHANGE.where(
    or_(
        _runs.c.lease_expires_at_us < bindparam("now"),
        _runs.c.timeout_at_us < bindparam("now"),
    )
)
# Ended runs, oldest end first: a range of the partial index ix_runs_ended (a comparison
# of ended_at_us implies the index's `IS NOT NULL`).
_ENDED = (
    _SELECT_RUN.where(_runs.c.ended_at_us < bindparam("cutoff"))
    .order_by(_runs.c.ended_at_us)
    .limit(bindparam("limit"))
)
_GET_RUNS = _SELECT_RUN.where(_runs.c.run_id.in_(bindparam("run_ids", expanding=True)))
_NAMESPACES_OF = select(_runs.c.run_id, _runs.c.namespace).where(
    _runs.c.run_id.in_(bindparam("run_ids", expanding=True))
)


# Who holds a run: `namespace/worker_id` (a namespace has no '/'), nobody unless it is
# RUNNING. A renewal names the namespace its caller's access was checked in, so a run
# id taken again in another namespace meanwhile is not renewed. An expression no index
# can serve, so that the primary key drives the renewals; SQLite would rather read
# every RUNNING run through ix_runs_status_queue than look up more than ten run ids.
_HOLDER = case(
    (
        _runs.c.status == RunStatus.RUNNING.value,
        _runs.c.namespace + "/" + _runs.c.worker_id,
    )
)


@functools.lru_cache(maxsize=256)
def _renew_leases(count: int) -> Update:
    """One UPDATE for `count` renewals: each run, if its worker holds it, takes its new
    lease. CASE rather than a joined VALUES list: SQLite names no VALUES columns, and
    `run_id IN (...)` reads the primary key on both databases."""

    def per_run(name: str) -> Case[Any]:
        return case(
            *(
                (_runs.c.run_id == bindparam(f"run_{i}"), bindparam(f"{name}_{i}"))
                for i in range(count)
            )
        )

    return (
        update(_runs)
        .where(
            _runs.c.run_id.in_([bindparam(f"run_{i}") for i in range(count)]),
            per_run("holder") == _HOLDER,
        )
        .values(lease_expires_at_us=per_run("until"))
        .returning(*(_runs.c[column] for column in fields.COLUMNS))
    )


_TIMEOUT_INPUTS = frozenset({"status", "started_at_us", "timeout_us"})


def _timeout_at(run: Run) -> int | None:
    """When a RUNNING run times out: `timeout` after its first claim."""
    if run.status is not RunStatus.RUNNING or run.started_at is None or run.timeout is None:
        return None
    return run.started_at + run.timeout


def _in_list_order(
    query: Select[Any],
    key: tuple[ColumnElement[Any], ColumnElement[Any]],
    order: SortOrder,
    after: PageCursor | None,
) -> Select[Any]:
    """`query` ordered by `key` (a run's created_at and run_id), from after the cursor."""
    created, run_id = key
    if after is not None:
        # A row comparison: an index over the key seeks it, and reads on from there.
        cursor = tuple_(literal(after.created_at), literal(after.run_id))
        if order is SortOrder.DESC:
            query = query.where(tuple_(created, run_id) < cursor)
        else:
            query = query.where(tuple_(created, run_id) > cursor)
    if order is SortOrder.DESC:
        return query.order_by(created.desc(), run_id.desc())
    return query.order_by(created.asc(), run_id.asc())


class KnownThreads:
    """The thread of the runs this process wrote last, for `get_locked`.

    A run never moves to another thread, so knowing its thread spares the read that
    finds it. Its id may be taken again once it is deleted, though, by a run on
    another thread: a lock taken from here is checked against the run read under it.
    Only the writer's thread uses it; it keeps the last `capacity` runs written (about
    200 bytes each).
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._threads: dict[str, str] = {}
        """Each run's thread, as `scoped_key` names it; its lock key is hashed only when
        the run is locked, not at every write."""

    def get(self, run_id: str) -> str | None:
        return self._threads.get(run_id)

    def remember(self, run: Run) -> None:
        self._threads[run.run_id] = scoped_key(run.namespace, run.thread_id)
        if len(self._threads) > self._capacity:
            del self._threads[next(iter(self._threads))]  # the longest known

    def forget(self, run_id: str) -> None:
        self._threads.pop(run_id, None)


class RunStore:
    """The runs table, over the connection of one transaction."""

    def __init__(
        self, connection: Connection, dialect: Dialect, known: KnownThreads | None = None
    ) -> None:
        self._conn = connection
        self._dialect = dialect
        self._known = known
        self._new_ids: set[str] = set()
        self.wait_for_locks = True
        """Whether a lock another transaction holds is waited for; if not, taking it
        raises LockBusy. A group's later members may not wait (see GroupWriter)."""

    def new_id(self) -> str:
        """A run id made now, that no run holds: its row's insert cannot fail, so it waits
        to go in one statement with its group's (`held_rows`)."""
        run_id = str(uuid.uuid4())
        self._new_ids.add(run_id)
        return run_id

    # -- locks -------------------------------------------------------------------------------

    def lock_thread(self, namespace: str, thread_id: str) -> None:
        """Serialize writers of one thread until commit."""
        self._lock(Lock.THREAD, scoped_key(namespace, thread_id))

    def lock_request(self, namespace: str, request_id: str) -> None:
        """Serialize creates that carry the same idempotency key until commit."""
        self._lock(Lock.REQUEST, scoped_key(namespace, request_id))

    def _lock(self, lock: Lock, value: str) -> None:
        if self.wait_for_locks:
            self._dialect.lock(self._conn, lock, value)
        elif not self._dialect.try_lock(self._conn, lock, value):
            raise LockBusy

    def try_lock_thread(self, namespace: str, thread_id: str) -> bool:
        """Like `lock_thread`, but give up at once if another transaction holds it."""
        return self._dialect.try_lock(self._conn, Lock.THREAD, scoped_key(namespace, thread_id))

    def try_lock_sweeper(self) -> bool:
        """Let one replica at a time sweep; held until commit."""
        return self._dialect.try_lock(self._conn, Lock.SWEEPER, "sweeper")

    def try_lock_retention(self) -> bool:
        """Let one replica at a time delete expired runs; held until commit."""
        return self._dialect.try_lock(self._conn, Lock.RETENTION, "retention")

    # -- reads -------------------------------------------------------------------------------

    def get(self, run_id: str) -> Run | None:
        row = self._conn.execute(_GET_RUN, {"run_id": run_id}).first()
        return None if row is None else fields.from_row(row)

    def get_locked(self, run_id: str) -> Run | None:
        """The run, read after locking its thread, so the caller may change it safely.

        Its row is locked too: a lease renewal, which takes no thread lock, waits until
        the caller commits, and the caller never writes back a lease it has not seen.
        """
        if self._dialect.serial_writes:
            return self.get(run_id)
        thread = self._known.get(run_id) if self._known is not None else None
        if thread is None:
            found = self._conn.execute(_THREAD_OF, {"run_id": run_id}).first()
            if found is None:
                return None
            thread = scoped_key(found.namespace, found.thread_id)
        while True:
            params = {
                "lock": int(Lock.THREAD),
                "key": lock_key(thread),
                "run_id": run_id,
                "may_wait": self.wait_for_locks,
            }
            row = self._conn.execute(_LOCK_RUN, params).first()
            if row is None:
                return None
            if row.run_id is None:
                raise LockBusy
            run = fields.from_row(row)
            locked, thread = thread, scoped_key(run.namespace, run.thread_id)
            if thread == locked:
                return run
            # The id was deleted and taken again by a run on another thread: lock that
            # one too, and read again.

    def get_by_request_id(self, namespace: str, request_id: str) -> Run | None:
        row = self._conn.execute(
            _GET_BY_REQUEST, {"namespace": namespace, "request_id": request_id}
        ).first()
        return None if row is None else fields.from_row(row)

    def inflight_on_thread(self, namespace: str, thread_id: str) -> list[Run]:
        """The thread's PENDING and RUNNING runs, oldest first."""
        rows = self._conn.execute(
            _INFLIGHT_ON_THREAD, {"namespace": namespace, "thread_id": thread_id}
        )
        return [fields.from_row(row) for row in rows]

    def inflight_matching(self, run_filter: RunFilter, limit: int) -> list[Run]:
        """Up to `limit` inflight runs matching the filter (its statuses narrow PENDING
        and RUNNING), oldest first, each locked for change as `get_locked` locks one.
        (More than `limit` match: which ones come is left to the plan, as the caller
        refuses them.)"""
        statuses = (run_filter.statuses or INFLIGHT) & INFLIGHT
        if not statuses:
            return []
        # Unordered, so that the plan reads an index range with nothing to sort: a thread's
        # runs, an assistant's or the inflight ones. They are put in creation order here.
        query = _SELECT_RUN.where(
            *self._filter_clauses(dataclasses.replace(run_filter, statuses=statuses))
        ).limit(limit)
        runs = self._in_creation_order(query)
        if self._dialect.serial_writes:
            return runs
        # Lock their threads, then read them again with their rows: runs may have
        # ended, or started on threads not locked yet, meanwhile.
        locked: set[tuple[str, str]] = set()
        while threads := {(run.namespace, run.thread_id) for run in runs} - locked:
            keys = [scoped_key(namespace, thread_id) for namespace, thread_id in threads]
            if self.wait_for_locks:
                self._dialect.lock_all(self._conn, Lock.THREAD, keys)
            elif not self._dialect.try_lock_all(self._conn, Lock.THREAD, keys):
                raise LockBusy
            locked |= threads
            runs = self._in_creation_order(query.with_for_update())
        return runs

    def _in_creation_order(self, query: Select[Any]) -> list[Run]:
        runs = [fields.from_row(row) for row in self._conn.execute(query)]
        return sorted(runs, key=lambda run: (run.created_at, run.run_id))

    def stuck(self, now: int, limit: int) -> list[Run]:
        """Up to `limit` RUNNING runs whose lease expired or whose timeout passed, each
        locked for change (threads that are busy now are left for the next look)."""
        rows = self._conn.execute(_STUCK, {"now": now, "limit": limit})
        # A run whose lease expired and whose timeout passed is read twice.
        runs = list({run.run_id: run for run in map(fields.from_row, rows)}.values())[:limit]
        # Read again under the locks: it may have been renewed or ended meanwhile.
        runs = self._locked_again(runs, _STILL_STUCK, now=now)
        # A lease or timeout_at outside RUNNING would be a bug; never act on one.
        return [run for run in runs if run.status is RunStatus.RUNNING]

    def ended_before(self, cutoff: int, limit: int) -> list[Run]:
        """Up to `limit` runs that ended before `cutoff`, oldest end first, each locked
        for change (threads that are busy now are left for the next look)."""
        rows = self._conn.execute(_ENDED, {"cutoff": cutoff, "limit": limit})
        # Read again under the locks: it may have been deleted or changed meanwhile.
        return self._locked_again(list(map(fields.from_row, rows)), _GET_RUN_FOR_CHANGE)

    def _locked_again(self, runs: list[Run], still: Select[Any], **params: Any) -> list[Run]:
        """Those of `runs` whose threads could be locked at once, as `still` (a read of
        one run by id) reads them now, under the lock; the others are skipped."""
        if self._dialect.serial_writes:
            return runs  # nobody else writes meanwhile
        rows = (
            self._conn.execute(still, {"run_id": run.run_id, **params}).first()
            for run in runs
            if self.try_lock_thread(run.namespace, run.thread_id)
        )
        return [fields.from_row(row) for row in rows if row is not None]

    def inflight_counts(self, namespaces: NamespaceSet) -> list[RunCount]:
        """PENDING and RUNNING runs per namespace (None: every namespace), by status."""
        statement, params = _INFLIGHT_COUNTS, {}
        if namespaces is not None:
            if not namespaces:
                return []
            statement = statement.where(_IN_NAMESPACES)
            params["namespaces"] = sorted(namespaces)
        rows = self._conn.execute(statement, params)
        counts = (RunCount(space, RunStatus(status), count) for space, status, count in rows)
        return sorted(counts, key=lambda count: (count.namespace, count.status))

    def list_page(
        self, run_filter: RunFilter, order: SortOrder, after: PageCursor | None, limit: int
    ) -> list[Run]:
        """Up to `limit` matching runs after the cursor, by (created_at, run_id)."""
        namespaces = run_filter.namespaces
        if namespaces is not None and len(namespaces) != 1:
            # One index seek per namespace, merged: a single query over several would read
            # every run of them all to sort them.
            pages = [
                self.list_page(dataclasses.replace(run_filter, namespaces=one), order, after, limit)
                for one in (frozenset({name}) for name in namespaces)
            ]
            merged = heapq.merge(
                *pages,
                key=lambda run: (run.created_at, run.run_id),
                reverse=order is SortOrder.DESC,
            )
            return list(itertools.islice(merged, limit))
        if run_filter.metadata and run_filter.thread_id is None:
            return self._metadata_page(run_filter, order, after, limit)
        query = _SELECT_RUN.where(*self._filter_clauses(run_filter))
        query = _in_list_order(query, (_runs.c.created_at_us, _runs.c.run_id), order, after)
        return [fields.from_row(row) for row in self._conn.execute(query.limit(limit))]

    def _metadata_page(
        self, run_filter: RunFilter, order: SortOrder, after: PageCursor | None, limit: int
    ) -> list[Run]:
        """`list_page` of a filter with metadata and no thread (whose runs are few, and
        its index finds them): candidates from the metadata index, in list order, the
        runs holding the first key with its value, each checked against the filter
        (entries are hashes); more candidates while too few of them match."""
        name = min(run_filter.metadata)
        entries = [_entries.c.entry == metadata_index.entry(name, run_filter.metadata[name])]
        if run_filter.namespaces is not None:
            entries.append(_entries.c.namespace.in_(sorted(run_filter.namespaces)))
        matches = and_(*self._filter_clauses(run_filter)).label("matches")
        key = (_entries.c.created_at_us, _entries.c.run_id)
        found: list[Run] = []
        while True:
            # A LIMIT over the index alone: the planner reads it in order and stops there,
            # whatever it guesses of how many candidates would match the rest.
            candidates = (
                _in_list_order(select(*key).where(*entries), key, order, after)
                .limit(limit)
                .subquery()
            )
            query = select(matches, *_SELECT_RUN.selected_columns).select_from(
                candidates.join(_runs, _runs.c.run_id == candidates.c.run_id)
            )
            # Put in list order here: a planner would sort them after the join, beside it.
            runs = sorted(
                ((row.matches, fields.from_row(row[1:])) for row in self._conn.execute(query)),
                key=lambda pair: (pair[1].created_at, pair[1].run_id),
                reverse=order is SortOrder.DESC,
            )
            found.extend(run for matched, run in runs if matched)
            if len(runs) < limit or len(found) >= limit:
                return found[:limit]
            after = PageCursor(runs[-1][1].created_at, runs[-1][1].run_id)

    def _filter_clauses(self, run_filter: RunFilter) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if run_filter.namespaces is not None:
            # Namespaces are few and large: the other clauses are the ones to seek by.
            in_namespaces = _runs.c.namespace.in_(sorted(run_filter.namespaces))
            clauses.append(self._dialect.unselective(in_namespaces))
        if run_filter.thread_id is not None:
            clauses.append(_runs.c.thread_id == run_filter.thread_id)
        if run_filter.assistant_id is not None:
            clauses.append(_runs.c.assistant_id == run_filter.assistant_id)
        if run_filter.statuses:
            clauses.append(_runs.c.status.in_(sorted(s.value for s in run_filter.statuses)))
        clauses.extend(
            self._dialect.json_equals(_runs.c.metadata, key, value)
            for key, value in run_filter.metadata.items()
        )
        return clauses

    # -- row writes (UnitOfWork.apply gives each change its revision first) -----------------

    def write(self, change: Change, stored: list[Any]) -> None:
        """Write the row of one revisioned change; `stored` is `fields.stored_values(run)`."""
        run = change.run
        if self._known is not None:
            if change.type is ChangeType.DELETED:
                self._known.forget(run.run_id)
            else:
                self._known.remember(run)
        if change.type is ChangeType.CREATED:
            values = fields.row_values(stored)
            values["create_revision"] = run.revision
            values["timeout_at_us"] = _timeout_at(run)
            if run.run_id in self._new_ids:
                held_rows.hold(self._conn, _INSERT_RUN, values)
                return
            try:
                self._conn.execute(_INSERT_RUN, values)
            except IntegrityError as error:
                # Two creates racing with one client-chosen run_id: the loser's whole
                # transaction rolls back.
                raise RunAlreadyExists(run.run_id) from error
        elif change.type is ChangeType.UPDATED:
            # Only the columns that changed (all if the old state is unknown): a claim
            # then serializes no JSON.
            if change.previous is None:
                values = fields.row_values(stored)
            else:
                values = fields.changed_values(run, change.previous)  # the revision included
            if change.previous is None or _TIMEOUT_INPUTS & values.keys():
                values["timeout_at_us"] = _timeout_at(run)
            values.pop("run_id", None)
            values["key"] = run.run_id
            # Held (it cannot fail: the change was made from the row as this transaction
            # read it, under its thread's lock): sent with the change's event, or before
            # the next read.
            held_rows.hold(self._conn, _UPDATE_RUN, values)
        else:
            self._conn.execute(_DELETE_RUN, {"run_id": run.run_id})

    def renew_leases(self, renewals: Sequence[tuple[str, str, str, int]]) -> list[Run]:
        """For each (run_id, namespace, worker_id, lease_expires_at) of distinct runs: set
        the lease if the worker holds the run in that namespace. Returns the runs
        renewed, as they are then. Use `UnitOfWork.renew_leases`, which tells the
        transaction's listeners."""
        params: dict[str, Any] = {}
        for i, (run_id, namespace, worker_id, until) in enumerate(renewals):
            holder = f"{namespace}/{worker_id}"
            params.update({f"run_{i}": run_id, f"holder_{i}": holder, f"until_{i}": until})
        rows = self._conn.execute(_renew_leases(len(renewals)), params)
        return [fields.from_row(row) for row in rows]

    def namespaces_of(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The namespace of each of these runs that exists, by run id."""
        rows = self._conn.execute(_NAMESPACES_OF, {"run_ids": list(run_ids)})
        return {row.run_id: row.namespace for row in rows}

    def get_many(self, run_ids: Sequence[str]) -> list[Run]:
        rows = self._conn.execute(_GET_RUNS, {"run_ids": list(run_ids)})
        return [fields.from_row(row) for row in rows]
