"""SQL over the runs table: the reads the rules need, the locks they take, and the row
writes of `UnitOfWork.apply`.

A `RunStore` works on the connection of one transaction that `Database` owns; the rules
reach it as `UnitOfWork.runs`. Reads return `records.Run` (through the field map in
`fields.py`); what differs between SQLite and PostgreSQL is asked of the `Dialect`.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
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
    RunFilter,
    RunStatus,
    SortOrder,
)
from runplane.server.store import fields
from runplane.server.store.dialects import Dialect, Lock
from runplane.server.store.schema import Base, RunRow

_runs = Base.metadata.tables[RunRow.__tablename__]

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
_INSERT_RUN = insert(_runs)
_UPDATE_RUN = update(_runs).where(_runs.c.run_id == bindparam("key"))
_DELETE_RUN = delete(_runs).where(_runs.c.run_id == bindparam("run_id"))
_NEXT_START_AFTER = select(func.min(_runs.c.start_after_us)).where(
    _runs.c.status == RunStatus.PENDING.value, _runs.c.start_after_us > bindparam("now")
)


def _scoped(namespace: str, key: str) -> str:
    """A lock key of one namespace: the same thread_id (or request_id) in two namespaces
    is two threads (two keys)."""
    return f"{namespace}/{key}"


def _claimable_query(by_assistant: bool, one_run: bool, by_namespace: bool) -> Select[Any]:
    blocker = _runs.alias("blocker")
    query = _SELECT_RUN.where(
        _runs.c.status == RunStatus.PENDING.value,
        or_(_runs.c.start_after_us.is_(None), _runs.c.start_after_us <= bindparam("now")),
        ~select(blocker.c.run_id)
        .where(
            blocker.c.thread_id == _runs.c.thread_id,
            blocker.c.namespace == _runs.c.namespace,
            or_(
                blocker.c.status == RunStatus.RUNNING.value,
                and_(
                    blocker.c.status == RunStatus.PENDING.value,
                    blocker.c.create_revision < _runs.c.create_revision,
                ),
            ),
        )
        .exists(),
    )
    if by_assistant:
        query = query.where(_runs.c.assistant_id.in_(bindparam("assistant_ids", expanding=True)))
    if one_run:
        query = query.where(_runs.c.run_id == bindparam("run_id"))
    if by_namespace:
        query = query.where(_runs.c.namespace.in_(bindparam("namespaces", expanding=True)))
    return query.order_by(_runs.c.create_revision).limit(bindparam("limit"))


# Built once per shape (any assistant or some; all runs or one; every namespace or
# some) so compiling is cached.
_CLAIMABLE = {
    shape: _claimable_query(*shape) for shape in itertools.product((False, True), repeat=3)
}


class RunStore:
    """The runs table, over the connection of one transaction."""

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self._conn = connection
        self._dialect = dialect

    # -- locks -------------------------------------------------------------------------------

    def lock_thread(self, namespace: str, thread_id: str) -> None:
        """Serialize writers of one thread until commit."""
        self._dialect.lock(self._conn, Lock.THREAD, _scoped(namespace, thread_id))

    def lock_request(self, namespace: str, request_id: str) -> None:
        """Serialize creates that carry the same idempotency key until commit."""
        self._dialect.lock(self._conn, Lock.REQUEST, _scoped(namespace, request_id))

    def try_lock_thread(self, namespace: str, thread_id: str) -> bool:
        """Like `lock_thread`, but give up at once if another transaction holds it."""
        return self._dialect.try_lock(self._conn, Lock.THREAD, _scoped(namespace, thread_id))

    def try_lock_sweeper(self) -> bool:
        """Let one replica at a time sweep; held until commit."""
        return self._dialect.try_lock(self._conn, Lock.SWEEPER, "sweeper")

    def claim_candidates(
        self, now: int, assistant_ids: Sequence[str], namespaces: NamespaceSet
    ) -> list[Run]:
        """The claimable runs worth trying to lock, oldest first: a few where concurrent
        claims may hold some (replicas), the first where none can."""
        return self.claimable(now, assistant_ids, namespaces, self._dialect.claim_candidates)

    def lock_candidate(self, run: Run, now: int, assistant_ids: Sequence[str]) -> bool:
        """Lock the thread of a run `claim_candidates` listed, if free, and make sure the
        run is still claimable under the lock (the list was read without it; its namespace
        was one asked for then, and never changes). A writer that holds the database's
        only write lock has nothing to do.
        """
        if self._dialect.serial_writes:
            return True
        return self.try_lock_thread(run.namespace, run.thread_id) and bool(
            self.claimable(now, assistant_ids, None, 1, run_id=run.run_id)
        )

    # -- reads -------------------------------------------------------------------------------

    def get(self, run_id: str) -> Run | None:
        row = self._conn.execute(_GET_RUN, {"run_id": run_id}).first()
        return None if row is None else fields.from_row(row)

    def get_locked(self, run_id: str) -> Run | None:
        """The run, read after locking its thread, so the caller may change it safely."""
        if not self._dialect.serial_writes:
            thread = self._conn.execute(_THREAD_OF, {"run_id": run_id}).first()
            if thread is None:
                return None
            self.lock_thread(thread.namespace, thread.thread_id)
        return self.get(run_id)

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

    def claimable(
        self,
        now: int,
        assistant_ids: Sequence[str],
        namespaces: NamespaceSet,
        limit: int,
        run_id: str | None = None,
    ) -> list[Run]:
        """PENDING runs a worker may take now, oldest first.

        A run is claimable when it is due (`start_after`), of a wanted assistant, in one
        of `namespaces`, and first in its thread's line: no run of its thread (the same
        thread_id in the same namespace) is RUNNING and no older run of its thread is
        PENDING. With `run_id`, the check is made for that run only.
        """
        if namespaces is not None and not namespaces:
            return []
        query = _CLAIMABLE[bool(assistant_ids), run_id is not None, namespaces is not None]
        params: dict[str, Any] = {"now": now, "assistant_ids": list(assistant_ids), "limit": limit}
        if run_id is not None:
            params["run_id"] = run_id
        if namespaces is not None:
            params["namespaces"] = sorted(namespaces)
        return [fields.from_row(row) for row in self._conn.execute(query, params)]

    def next_start_after(self, now: int) -> int | None:
        """When the earliest PENDING run that is not yet due becomes due."""
        return self._conn.execute(_NEXT_START_AFTER, {"now": now}).scalar_one_or_none()

    def stuck(self, now: int, limit: int) -> list[Run]:
        """RUNNING runs whose lease expired or whose timeout passed."""
        query = _SELECT_RUN.where(
            _runs.c.status == RunStatus.RUNNING.value,
            or_(
                _runs.c.lease_expires_at_us < now,
                _runs.c.started_at_us + _runs.c.timeout_us < now,
            ),
        )
        return [fields.from_row(row) for row in self._conn.execute(query.limit(limit))]

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
        query = _SELECT_RUN.where(*self._filter_clauses(run_filter))
        if after is not None:
            key = (_runs.c.created_at_us, _runs.c.run_id)
            if order is SortOrder.DESC:
                query = query.where(
                    or_(
                        key[0] < after.created_at,
                        and_(key[0] == after.created_at, key[1] < after.run_id),
                    )
                )
            else:
                query = query.where(
                    or_(
                        key[0] > after.created_at,
                        and_(key[0] == after.created_at, key[1] > after.run_id),
                    )
                )
        if order is SortOrder.DESC:
            query = query.order_by(_runs.c.created_at_us.desc(), _runs.c.run_id.desc())
        else:
            query = query.order_by(_runs.c.created_at_us.asc(), _runs.c.run_id.asc())
        return [fields.from_row(row) for row in self._conn.execute(query.limit(limit))]

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
        if change.type is ChangeType.CREATED:
            values = fields.row_values(stored)
            values["create_revision"] = run.revision
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
            values.pop("run_id", None)
            values["key"] = run.run_id
            self._conn.execute(_UPDATE_RUN, values)
        else:
            self._conn.execute(_DELETE_RUN, {"run_id": run.run_id})
