"""SQL over the event log: reading it by revision, and compacting its old end.

`store_state.compact_revision` is the log's lower bound: every event with a revision
at or below it is gone (removed by compaction; 0 at first, when nothing is), and the
log holds every revision from `compact_revision + 1` to `store_state.revision`, with no
gap. A watcher that has seen everything up to revision P can therefore be served from
the log if and only if `P >= compact_revision`.

`reserve` and `append` are the log's side of `UnitOfWork.apply`: the counter row is
updated first in the transaction's writes, and held until commit, so revisions are
handed out in commit order with no gaps. The statement that first takes it also rings
the other replicas at commit (PostgreSQL's NOTIFY). Holding it, the transaction hands
out later revisions itself: the counter's new value and the events it appends are held
(`held_rows`), and so sent before the transaction's next read or its commit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Update,
    bindparam,
    cast,
    delete,
    insert,
    null,
    select,
    union_all,
    update,
)

from runplane.server.records import Change, EventType, Run, RunEvent
from runplane.server.store import fields, held_rows
from runplane.server.store.dialects import Dialect, Lock
from runplane.server.store.schema import Base, RunEventRow, StoreStateRow

_events = Base.metadata.tables[RunEventRow.__tablename__]
_state = Base.metadata.tables[StoreStateRow.__tablename__]

_STATE = select(_state.c.revision, _state.c.compact_revision)
_ADVANCE = (
    update(_state).where(_state.c.id == 1).values(revision=_state.c.revision + bindparam("count"))
)
_ADVANCE_TO = update(_state).where(_state.c.id == 1).values(revision=bindparam("last_revision"))


@functools.lru_cache(maxsize=8)
def _reserve(dialect: Dialect) -> Update:
    """Take revisions and return the last; on a shared database, also ring the other
    replicas at commit (their hubs read the log from where they stand)."""
    return dialect.notifying(_ADVANCE.returning(_state.c.revision))


_INSERT_EVENTS = insert(_events)


@dataclass(frozen=True, slots=True)
class LogState:
    revision: int
    """The last committed revision."""
    compact_revision: int
    """Every event up to this revision is gone from the log."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """Events read from the log and the state of the same snapshot."""

    state: LogState
    events: list[RunEvent]


@dataclass(frozen=True, slots=True)
class Compaction:
    state: LogState
    """The log after the batch."""
    removed: int
    """Events the batch removed."""


@functools.lru_cache(maxsize=2)
def _read_after(*, by_run: bool) -> CompoundSelect[Any]:
    """The events after `:after` (of `:run_id`), up to `:limit`, and the log state: a row
    of its own, its event columns NULL (a union keeps no order).

    A union rather than a join: psycopg prepares the statement after a few runs, and a
    join's generic plan multiplies the page's guessed size by the state table's (never
    analyzed, so guessed at 1,700 rows): a cost 2,000 times too high, high enough for
    PostgreSQL to compile the query each time it ran (`dialects._without_jit`).
    """
    page = _events.select().where(_events.c.revision > bindparam("after"))
    if by_run:
        page = page.where(_events.c.run_id == bindparam("run_id"))
    events = page.order_by(_events.c.revision).limit(bindparam("limit")).subquery("events")
    unknown = null()
    return union_all(
        select(
            cast(unknown, _state.c.revision.type).label("log_revision"),
            cast(unknown, _state.c.compact_revision.type).label("log_compacted"),
            *events.c,
        ),
        select(
            _state.c.revision,
            _state.c.compact_revision,
            *(cast(unknown, column.type) for column in events.c),
        ),
    )


def _by_revision(row: Any) -> int:
    return int(row.revision)


def _to_event(row: Any) -> RunEvent:
    return RunEvent(
        type=EventType(row.type),
        revision=row.revision,
        run=fields.from_json(row.run),
        previous=None if row.previous is None else fields.from_json_pair(row.run, row.previous),
    )


class EventLog:
    """The event log and the revision counter, over the connection of one transaction."""

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self._conn = connection
        self._dialect = dialect
        self._next_revision: int | None = None
        """The next revision to hand out, once the transaction holds the counter row."""

    def state(self) -> LogState:
        row = self._conn.execute(_STATE).one()
        return LogState(revision=row.revision, compact_revision=row.compact_revision)

    # -- writes (UnitOfWork.apply) -----------------------------------------------------------

    def reserve(self, count: int) -> int:
        """Take the next `count` revisions; returns the first. Holds the counter row until
        commit, so every read and check of the transaction comes before this."""
        first = self._next_revision
        if first is None:
            reserve = _reserve(self._dialect)
            last = int(self._conn.execute(reserve, {"count": count}).scalars().one())
            self._next_revision = last + 1
            return last - count + 1
        self._next_revision = first + count
        # The transaction holds the counter row, so its new value is known.
        held_rows.hold(self._conn, _ADVANCE_TO, {"last_revision": first + count - 1})
        return first

    @staticmethod
    def entry(change: Change, stored: Sequence[Any], committed_at: int) -> dict[str, Any]:
        """The log row of one revisioned change; `stored` is the run's `stored_values`."""
        previous = change.previous
        return {
            "revision": change.run.revision,
            "type": change.type.value,
            "run_id": change.run.run_id,
            "committed_at_us": committed_at,
            "run": fields.to_json(stored),
            "previous": None if previous is None else fields.previous_json(previous, change.run),
        }

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Log these entries of reserved revisions (held, like the counter's new value)."""
        assert self._next_revision is not None, "reserve revisions first"
        for entry in entries:
            held_rows.hold(self._conn, _INSERT_EVENTS, entry)

    # -- reads -------------------------------------------------------------------------------

    def read_after(self, after: int, limit: int, run_id: str | None = None) -> LogPage:
        """Up to `limit` events with a revision above `after`, oldest first (only `run_id`'s
        if given), and the state that tells whether the log still reached back to `after`
        and how far it went: read by one statement, so they agree without a snapshot
        transaction (two round trips fewer on PostgreSQL).
        """
        rows = self._conn.execute(
            _read_after(by_run=run_id is not None),
            {"after": after, "limit": limit, "run_id": run_id},
        ).all()
        (state,) = (row for row in rows if row.log_revision is not None)
        events = sorted((row for row in rows if row.log_revision is None), key=_by_revision)
        return LogPage(
            LogState(revision=state.log_revision, compact_revision=state.log_compacted),
            [_to_event(row) for row in events],
        )

    def logged_run(self, run_id: str, since: int) -> Run | None:
        """The run as its first change at `since` or later left it, if the log holds one
        (its namespace, say, for a run deleted since)."""
        row = self._conn.execute(
            _events.select()
            .where(_events.c.revision >= since, _events.c.run_id == run_id)
            .order_by(_events.c.revision)
            .limit(1)
        ).first()
        return None if row is None else _to_event(row).run

    # -- compaction --------------------------------------------------------------------------

    def compact(self, cutoff_us: int, batch: int) -> Compaction | None:
        """Remove up to `batch` of the oldest events committed before `cutoff_us`.

        Stops at the first event inside the window, even if later ones are older (replica
        clocks may disagree a little): compaction only ever removes a prefix of the log.
        Returns what it did, or None when another replica is compacting right now.
        """
        if not self._dialect.try_lock(self._conn, Lock.COMPACTION):
            return None
        state = self.state()
        rows = self._conn.execute(
            select(_events.c.revision, _events.c.committed_at_us)
            .where(_events.c.revision > state.compact_revision)
            .order_by(_events.c.revision)
            .limit(batch)
        )
        target = state.compact_revision
        for revision, committed_at_us in rows:
            if committed_at_us >= cutoff_us:
                break
            target = revision
        if target == state.compact_revision:
            return Compaction(state, 0)
        self._conn.execute(
            delete(_events).where(
                _events.c.revision > state.compact_revision, _events.c.revision <= target
            )
        )
        # The space of these events, and of runs deleted since the last batch.
        self._dialect.release_space(self._conn)
        # Last, so the counter row that every writer needs is held only briefly.
        self._conn.execute(update(_state).where(_state.c.id == 1).values(compact_revision=target))
        return Compaction(
            LogState(revision=state.revision, compact_revision=target),
            removed=target - state.compact_revision,
        )
