"""SQL for runs, their event log and the revision counter.

A `RunStore` wraps the connection of one transaction that the caller owns (see
`Database.write` / `Database.read`). Reads return `records.Run`; writes go
through `apply`, which numbers the changes with the next global revisions.
"""

from __future__ import annotations

import hashlib
import json
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
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from runplane.server.errors import RunAlreadyExists
from runplane.server.records import (
    INFLIGHT,
    Change,
    ChangeType,
    MultitaskStrategy,
    PageCursor,
    Run,
    RunFilter,
    RunStatus,
    SortOrder,
    now_us,
)
from runplane.server.store.database import CHANGES, Dialect
from runplane.server.store.event_log import notify_changes
from runplane.server.store.schema import Base, RunEventRow, RunRow, StoreStateRow

_runs = Base.metadata.tables[RunRow.__tablename__]
_events = Base.metadata.tables[RunEventRow.__tablename__]
_state = Base.metadata.tables[StoreStateRow.__tablename__]

# Namespaces of PostgreSQL advisory locks (first key of the two-int form).
_POSTGRES_CLAIM_CANDIDATES = 8
_THREAD_LOCK = 1
_REQUEST_LOCK = 2
_SWEEPER_LOCK = 3


def _lock_key(value: str) -> int:
    """A signed 32-bit key for an advisory lock; collisions only serialize more."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=4).digest(), signed=True)


def _row_values(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "status": run.status.value,
        "multitask_strategy": run.multitask_strategy.value,
        "metadata": run.metadata,
        "kwargs": run.kwargs,
        "created_at_us": run.created_at,
        "updated_at_us": run.updated_at,
        "revision": run.revision,
        "attempt": run.attempt,
        "started_at_us": run.started_at,
        "ended_at_us": run.ended_at,
        "error": run.error,
        "cancel_reason": run.cancel_reason,
        "worker_id": run.worker_id,
        "lease_expires_at_us": run.lease_expires_at,
        "timeout_us": run.timeout,
        "start_after_us": run.start_after,
        "request_id": run.request_id,
    }


_COLUMNS = [
    _runs.c.run_id,
    _runs.c.thread_id,
    _runs.c.assistant_id,
    _runs.c.status,
    _runs.c.multitask_strategy,
    _runs.c.metadata,
    _runs.c.kwargs,
    _runs.c.created_at_us,
    _runs.c.updated_at_us,
    _runs.c.revision,
    _runs.c.attempt,
    _runs.c.started_at_us,
    _runs.c.ended_at_us,
    _runs.c.error,
    _runs.c.cancel_reason,
    _runs.c.worker_id,
    _runs.c.lease_expires_at_us,
    _runs.c.timeout_us,
    _runs.c.start_after_us,
    _runs.c.request_id,
]


def _to_run(row: Sequence[Any]) -> Run:
    (
        run_id,
        thread_id,
        assistant_id,
        status,
        strategy,
        metadata,
        kwargs,
        created_at,
        updated_at,
        revision,
        attempt,
        started_at,
        ended_at,
        error,
        cancel_reason,
        worker_id,
        lease_expires_at,
        timeout,
        start_after,
        request_id,
    ) = row
    return Run(
        run_id=run_id,
        thread_id=thread_id,
        assistant_id=assistant_id,
        status=RunStatus(status),
        multitask_strategy=MultitaskStrategy(strategy),
        metadata=metadata,
        kwargs=kwargs,
        created_at=created_at,
        updated_at=updated_at,
        revision=revision,
        attempt=attempt,
        started_at=started_at,
        ended_at=ended_at,
        error=error,
        cancel_reason=cancel_reason,
        worker_id=worker_id,
        lease_expires_at=lease_expires_at,
        timeout=timeout,
        start_after=start_after,
        request_id=request_id,
    )


_SELECT_RUN = select(*_COLUMNS)
# Hot statements are built once: SQLAlchemy then reuses their compiled form.
_GET_RUN = _SELECT_RUN.where(_runs.c.run_id == bindparam("run_id"))
_THREAD_OF = select(_runs.c.thread_id).where(_runs.c.run_id == bindparam("run_id"))
_GET_BY_REQUEST = _SELECT_RUN.where(_runs.c.request_id == bindparam("request_id"))
_INFLIGHT_ON_THREAD = _SELECT_RUN.where(
    _runs.c.thread_id == bindparam("thread_id"),
    _runs.c.status.in_([status.value for status in INFLIGHT]),
).order_by(_runs.c.create_revision)
_BUMP_REVISION = (
    update(_state)
    .where(_state.c.id == 1)
    .values(revision=_state.c.revision + bindparam("count"))
    .returning(_state.c.revision)
)
_INSERT_RUN = insert(_runs)
_UPDATE_RUN = update(_runs).where(_runs.c.run_id == bindparam("key"))
_DELETE_RUN = delete(_runs).where(_runs.c.run_id == bindparam("run_id"))
_INSERT_EVENTS = insert(_events)
_CURRENT_REVISION = select(_state.c.revision)


def _claimable_query(by_assistant: bool, one_run: bool) -> Select[Any]:
    blocker = _runs.alias("blocker")
    query = _SELECT_RUN.where(
        _runs.c.status == RunStatus.PENDING.value,
        or_(_runs.c.start_after_us.is_(None), _runs.c.start_after_us <= bindparam("now")),
        ~select(blocker.c.run_id)
        .where(
            blocker.c.thread_id == _runs.c.thread_id,
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
    return query.order_by(_runs.c.create_revision).limit(bindparam("limit"))


# Built once per shape (any assistant or some; all runs or one) so compiling is cached.
_CLAIMABLE = {
    (by_assistant, one_run): _claimable_query(by_assistant, one_run)
    for by_assistant in (False, True)
    for one_run in (False, True)
}


class RunStore:
    """SQL over the connection of one transaction."""

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self._conn = connection
        self._dialect = dialect

    # -- locks -------------------------------------------------------------------------------

    def lock_thread(self, thread_id: str) -> None:
        """Serialize writers of one thread until commit (PostgreSQL).

        On SQLite the write transaction already holds the database's only write lock.
        """
        self._advisory_lock(_THREAD_LOCK, thread_id)

    def lock_request(self, request_id: str) -> None:
        """Serialize creates that carry the same idempotency key until commit."""
        self._advisory_lock(_REQUEST_LOCK, request_id)

    def try_lock_thread(self, thread_id: str) -> bool:
        """Like `lock_thread`, but give up at once if another transaction holds it."""
        return self._try_advisory_lock(_THREAD_LOCK, thread_id)

    def claim_candidates(self, now: int, assistant_ids: Sequence[str]) -> list[Run]:
        """The claimable runs worth trying to lock, oldest first: on PostgreSQL a few,
        as concurrent claims may hold some; on SQLite the first, as none can."""
        limit = _POSTGRES_CLAIM_CANDIDATES if self._dialect.is_postgres else 1
        return self.claimable(now, assistant_ids, limit)

    def lock_candidate(self, run: Run, now: int, assistant_ids: Sequence[str]) -> bool:
        """Lock the thread of a run `claimable` listed, if free, and make sure the run is
        still claimable under the lock (PostgreSQL: the list was read without it). On
        SQLite the write transaction already holds the only write lock: nothing to do.
        """
        if not self._dialect.is_postgres:
            return True
        return self.try_lock_thread(run.thread_id) and bool(
            self.claimable(now, assistant_ids, 1, run_id=run.run_id)
        )

    def try_lock_sweeper(self) -> bool:
        """Let one replica at a time sweep (PostgreSQL); held until commit."""
        return self._try_advisory_lock(_SWEEPER_LOCK, "sweeper")

    def _try_advisory_lock(self, namespace: int, value: str) -> bool:
        if not self._dialect.is_postgres:
            return True
        return bool(
            self._conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:namespace, :key)"),
                {"namespace": namespace, "key": _lock_key(value)},
            ).scalar_one()
        )

    def _advisory_lock(self, namespace: int, value: str) -> None:
        if self._dialect.is_postgres:
            self._conn.execute(
                text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
                {"namespace": namespace, "key": _lock_key(value)},
            )

    # -- reads -------------------------------------------------------------------------------

    def get(self, run_id: str) -> Run | None:
        row = self._conn.execute(_GET_RUN, {"run_id": run_id}).first()
        return None if row is None else _to_run(row)

    def get_locked(self, run_id: str) -> Run | None:
        """The run, read after locking its thread, so the caller may change it safely."""
        if self._dialect.is_postgres:
            thread_id = self._conn.execute(_THREAD_OF, {"run_id": run_id}).scalar_one_or_none()
            if thread_id is None:
                return None
            self.lock_thread(thread_id)
        return self.get(run_id)

    def get_by_request_id(self, request_id: str) -> Run | None:
        row = self._conn.execute(_GET_BY_REQUEST, {"request_id": request_id}).first()
        return None if row is None else _to_run(row)

    def inflight_on_thread(self, thread_id: str) -> list[Run]:
        """The thread's PENDING and RUNNING runs, oldest first."""
        rows = self._conn.execute(_INFLIGHT_ON_THREAD, {"thread_id": thread_id})
        return [_to_run(row) for row in rows]

    def claimable(
        self, now: int, assistant_ids: Sequence[str], limit: int, run_id: str | None = None
    ) -> list[Run]:
        """PENDING runs a worker may take now, oldest first.

        A run is claimable when it is due (`start_after`), of a wanted assistant, and
        first in its thread's line: no run of its thread is RUNNING and no older run
        of its thread is PENDING. With `run_id`, the check is made for that run only.
        """
        query = _CLAIMABLE[bool(assistant_ids), run_id is not None]
        params = {"now": now, "assistant_ids": list(assistant_ids), "limit": limit}
        if run_id is not None:
            params["run_id"] = run_id
        return [_to_run(row) for row in self._conn.execute(query, params)]

    def next_start_after(self, now: int) -> int | None:
        """When the earliest PENDING run that is not yet due becomes due."""
        return self._conn.execute(
            select(func.min(_runs.c.start_after_us)).where(
                _runs.c.status == RunStatus.PENDING.value, _runs.c.start_after_us > now
            )
        ).scalar_one_or_none()

    def stuck(self, now: int, limit: int) -> list[Run]:
        """RUNNING runs whose lease expired or whose timeout passed."""
        query = _SELECT_RUN.where(
            _runs.c.status == RunStatus.RUNNING.value,
            or_(
                _runs.c.lease_expires_at_us < now,
                _runs.c.started_at_us + _runs.c.timeout_us < now,
            ),
        )
        return [_to_run(row) for row in self._conn.execute(query.limit(limit))]

    def current_revision(self) -> int:
        return int(self._conn.execute(_CURRENT_REVISION).scalar_one())

    def list_page(
        self, run_filter: RunFilter, order: SortOrder, after: PageCursor | None, limit: int
    ) -> list[Run]:
        """Up to `limit` matching runs after the cursor, by (created_at, run_id)."""
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
        return [_to_run(row) for row in self._conn.execute(query.limit(limit))]

    def _filter_clauses(self, run_filter: RunFilter) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if run_filter.thread_id is not None:
            clauses.append(_runs.c.thread_id == run_filter.thread_id)
        if run_filter.assistant_id is not None:
            clauses.append(_runs.c.assistant_id == run_filter.assistant_id)
        if run_filter.statuses:
            clauses.append(_runs.c.status.in_(sorted(s.value for s in run_filter.statuses)))
        clauses.extend(
            self._metadata_equals(key, value) for key, value in run_filter.metadata.items()
        )
        return clauses

    def _metadata_equals(self, key: str, value: Any) -> ColumnElement[bool]:
        """metadata[key] == value, comparing JSON values rather than text."""
        document = json.dumps(value, sort_keys=True, separators=(",", ":"))
        if self._dialect.is_postgres:
            return _runs.c.metadata.op("->")(literal(key)) == func.cast(
                literal(document), _runs.c.metadata.type
            )
        # SQLite: `->` renders the stored value as minified JSON; stored documents are
        # written with sorted keys, so equal values are equal text.
        path = "$." + json.dumps(key)
        return _runs.c.metadata.op("->")(literal(path)) == func.json(literal(document))

    # -- writes ------------------------------------------------------------------------------

    def apply(self, changes: Sequence[Change]) -> list[Run]:
        """Commit-order the changes: each gets the next revision, the run rows and the event
        log are written with it. Returns the runs as stored, revisions set.

        Every read and check of the transaction is done before this; taking the counter
        row here holds its lock only for these few writes.
        """
        if not changes:
            return []
        # Recorded before any statement: a transaction that fails past here wrote something.
        written = self._conn.info.setdefault(CHANGES, [])
        written.extend(changes)
        last = self._conn.execute(_BUMP_REVISION, {"count": len(changes)}).scalar_one()
        first = last - len(changes) + 1
        committed_at = now_us()
        stored: list[Run] = []
        events: list[dict[str, Any]] = []
        for offset, change in enumerate(changes):
            revision = first + offset
            run = change.run
            run.revision = revision
            if change.type is ChangeType.CREATED:
                self._insert(run)
            elif change.type is ChangeType.UPDATED:
                self._update(run, change.previous)
            else:
                self._conn.execute(_DELETE_RUN, {"run_id": run.run_id})
            stored.append(run)
            events.append(
                {
                    "revision": revision,
                    "type": change.type.value,
                    "run_id": run.run_id,
                    "committed_at_us": committed_at,
                    "run": run.to_json(),
                    "previous": None if change.previous is None else change.previous.to_json(),
                }
            )
        self._conn.execute(_INSERT_EVENTS, events)
        # The other replicas' watch hubs hear of it at commit (PostgreSQL); this
        # process's hears through Database.on_commit.
        notify_changes(self._conn, self._dialect, last)
        return stored

    def _insert(self, run: Run) -> None:
        values = _row_values(run)
        values["create_revision"] = run.revision
        try:
            self._conn.execute(_INSERT_RUN, values)
        except IntegrityError as error:
            # Two creates racing with one client-chosen run_id: the loser's whole
            # transaction rolls back.
            raise RunAlreadyExists(run.run_id) from error

    def _update(self, run: Run, previous: Run | None) -> None:
        """Write the columns that changed (all of them if the old state is unknown):
        a claim or a heartbeat then serializes no JSON."""
        values = _row_values(run)
        if previous is not None:
            before = _row_values(previous)
            values = {name: value for name, value in values.items() if value != before[name]}
            values["revision"] = run.revision
        values["key"] = run.run_id
        values.pop("run_id", None)
        self._conn.execute(_UPDATE_RUN, values)
