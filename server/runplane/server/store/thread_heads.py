"""The thread heads: of each thread, the one run a worker may claim, kept by the store.

A thread's runs run one at a time, in creation order, so of each (namespace, thread)
only its first inflight run, the *head*, competes for a worker. `thread_heads` holds a
row per thread with inflight runs: the head's run id, assistant, priority, due time
(creation, or start_after when later) and state: `ready`, `delayed` (due later) or
`running`. A claim is then a range read of a partial index of ready heads in claim
order (priority, then due time) that stops at its LIMIT, however long the backlog
behind the heads and whatever the planner's statistics say.

`UnitOfWork.apply` hands every batch of changes to `release` and `follow`, in the
transaction that writes them, so no rule has to remember the heads. Time moves heads
too: a delayed head becomes claimable at its due time. Claims read the delayed heads
that fell due along with the ready ones, and the sweeper moves them into the ready
index (`promote_due`), so the fallen-due heads a claim reads stay few.

The same heads answer how deep each queue is (`queues`): the claimable runs are the
ready heads and the fallen-due delayed ones, counted per queue over their indexes.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Connection,
    Delete,
    Integer,
    Row,
    Select,
    bindparam,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by

from runplane.server.records import (
    Change,
    ChangeType,
    NamespaceSet,
    QueueCount,
    Run,
    RunStatus,
    now_us,
)
from runplane.server.store import fields, held_rows
from runplane.server.store.dialects import Dialect, Lock, lock_key, scoped_key
from runplane.server.store.schema import (
    DELAYED_PREDICATE,
    INFLIGHT_PREDICATE,
    READY_PREDICATE,
    Base,
    RunRow,
    ThreadHeadRow,
)

READY = "ready"
DELAYED = "delayed"
RUNNING = "running"

FALLEN_DUE_LOOK = 64
"""Delayed heads past their due time a claim considers, earliest first, whatever their
scope: the sweeper moves them to the ready index every second, so only those that
fell due since are left. A claim for some assistants misses theirs behind 64 others
for at most that second."""

MAX_RANGE_READS = 32
"""Scope values (namespace, assistant or pair) a claim reads one range each for."""

_heads = Base.metadata.tables[ThreadHeadRow.__tablename__]
_runs = Base.metadata.tables[RunRow.__tablename__]
_KEY = ("namespace", "thread_id")

# The partial indexes' predicates, as literals, so the planner can prove them.
_IS_READY = text(READY_PREDICATE)
_IS_DELAYED = text(DELAYED_PREDICATE)
_IS_INFLIGHT = text(INFLIGHT_PREDICATE)

_CLAIM_ORDER = (_heads.c.priority.desc(), _heads.c.due_us)
_HEAD_COLUMNS = (
    _heads.c.namespace,
    _heads.c.thread_id,
    _heads.c.run_id,
    _heads.c.priority,
    _heads.c.due_us,
    _heads.c.lock_key,
)
_ON_THREAD = (
    _heads.c.namespace == bindparam("namespace"),
    _heads.c.thread_id == bindparam("thread_id"),
)

_NEXT_DUE = select(func.min(_heads.c.due_us)).where(_IS_DELAYED, _heads.c.due_us > bindparam("now"))
_SELECT_RUN = select(*(_runs.c[column] for column in fields.COLUMNS))
_FIRST_INFLIGHT = (
    select(
        _runs.c.run_id,
        _runs.c.assistant_id,
        _runs.c.priority,
        _runs.c.status,
        _runs.c.created_at_us,
        _runs.c.start_after_us,
    )
    .where(
        _runs.c.namespace == bindparam("namespace"),
        _runs.c.thread_id == bindparam("thread_id"),
        _IS_INFLIGHT,
    )
    .order_by(_runs.c.create_revision)
    .limit(1)
)
# Updates of one head: parameters named after columns set them; the key's have other names.
_AT_HEAD = (
    _heads.c.namespace == bindparam("head_namespace"),
    _heads.c.thread_id == bindparam("head_thread_id"),
)
_MOVE_HEAD = update(_heads).where(*_AT_HEAD, _heads.c.run_id == bindparam("head_run_id"))
# A head an earlier version wrote, without its lock's key, gets it (see `first_claimable`).
_SET_LOCK_KEY = update(_heads).where(*_AT_HEAD)


def _drop_head_unless_inflight(*besides: Any) -> Delete:
    """Delete the thread's head if none of its runs (`besides` those excluded) is inflight."""
    inflight = select(_runs.c.run_id).where(
        _runs.c.namespace == bindparam("namespace"),
        _runs.c.thread_id == bindparam("thread_id"),
        _IS_INFLIGHT,
        *besides,
    )
    return delete(_heads).where(*_ON_THREAD, ~inflight.exists())


# A thread whose last inflight run ended has no head: the common case, one statement.
_DROP_HEAD_IF_DONE = _drop_head_unless_inflight()
# The same, before the run that ends (`run_id`) is written (`ThreadHeads.release`).
_DROP_HEAD_OF_LAST = _drop_head_unless_inflight(_runs.c.run_id != bindparam("run_id"))


def _fallen_due(limit: Any, *columns: Any) -> Select[Any]:
    """The first `limit` delayed heads due by `now`, by due time.

    A range of the delayed index that ends at `now`: however the planner reads it (in
    order up to the LIMIT, or the whole range then sorted), it holds only the heads
    that fell due since the sweeper last promoted them.
    """
    return (
        select(*_HEAD_COLUMNS, *columns)
        .where(_IS_DELAYED, _heads.c.due_us <= bindparam("now"))
        .order_by(_heads.c.due_us)
        .limit(limit)
    )


_promoted = _fallen_due(bindparam("limit")).subquery("promoted")
_PROMOTE = (
    update(_heads)
    .where(
        tuple_(_heads.c.namespace, _heads.c.thread_id).in_(
            select(_promoted.c.namespace, _promoted.c.thread_id)
        )
    )
    .values(state=READY)
)


# Claimable heads per queue: the ready index read whole, grouped by its leading column
# when every namespace is asked for; and the delayed index's range that fell due, a few
# heads (the sweeper promotes them every second), counted as they come.
_QUEUE_SIZES = (
    select(_heads.c.queue, func.count(), func.min(_heads.c.due_us))
    .where(_IS_READY)
    .group_by(_heads.c.queue)
)
_FALLEN_DUE_SIZES = select(_heads.c.queue, literal(1), _heads.c.due_us).where(
    _IS_DELAYED, _heads.c.due_us <= bindparam("now")
)
_IN_NAMESPACES = _heads.c.namespace.in_(bindparam("namespaces", expanding=True))


def due_us(created_at: int, start_after: int | None) -> int:
    """When a run may start: its creation, or its start_after when later."""
    return created_at if start_after is None or start_after < created_at else start_after


def _state(status: str, due: int, now: int) -> str:
    if status == RunStatus.RUNNING.value:
        return RUNNING
    return DELAYED if due > now else READY


def queue(namespace: str, assistant_id: str) -> str:
    """The queue of one assistant in one namespace (a namespace has no '/')."""
    return f"{namespace}/{assistant_id}"


@dataclass(frozen=True, slots=True)
class _HeadRun:
    """What a head row says of its run."""

    run_id: str
    assistant_id: str
    priority: int
    status: str
    created_at: int
    start_after: int | None

    @classmethod
    def of(cls, run: Run) -> _HeadRun:
        return cls(
            run.run_id,
            run.assistant_id,
            run.priority,
            run.status.value,
            run.created_at,
            run.start_after,
        )

    def row(self, namespace: str, thread_id: str, now: int) -> dict[str, Any]:
        """The head row of (namespace, thread_id) that names this run."""
        due = due_us(self.created_at, self.start_after)
        return {
            "namespace": namespace,
            "thread_id": thread_id,
            "run_id": self.run_id,
            "assistant_id": self.assistant_id,
            "queue": queue(namespace, self.assistant_id),
            "priority": self.priority,
            "due_us": due,
            "state": _state(self.status, due, now),
            "lock_key": lock_key(scoped_key(namespace, thread_id)),
        }


def _row(run: Run, now: int) -> dict[str, Any]:
    """The head row that names `run` as its thread's head."""
    return _HeadRun.of(run).row(run.namespace, run.thread_id, now)


def _lines(changes: Sequence[Change]) -> dict[tuple[str, str], list[Change]]:
    """The changes by the thread (namespace, thread id) of their run, in order."""
    lines: dict[tuple[str, str], list[Change]] = {}
    for change in changes:
        lines.setdefault((change.run.namespace, change.run.thread_id), []).append(change)
    return lines


def _moves_head(run: Run, before: Run) -> bool:
    """Whether an update may change what the head row says."""
    return (
        run.status is not before.status
        or run.start_after != before.start_after
        or run.priority != before.priority
        or run.assistant_id != before.assistant_id
    )


def _scope_column(namespaces: int, assistants: int) -> tuple[Any, list[str]]:
    """The ready heads' column a scope is an equality on, and the parameters of its
    values: queue, namespace or assistant, the leading column of one ready index each."""
    if namespaces and assistants:
        return _heads.c.queue, [
            f"queue_{n}_{a}" for n in range(namespaces) for a in range(assistants)
        ]
    if namespaces:
        return _heads.c.namespace, [f"namespace_{n}" for n in range(namespaces)]
    return _heads.c.assistant_id, [f"assistant_{a}" for a in range(assistants)]


@functools.lru_cache(maxsize=64)
def _claimable_query(namespaces: int, assistants: int) -> Select[Any]:
    """Claimable heads in claim order, for claims given `namespaces` and `assistants`
    values (0: any). Each value of the scope (a queue, a namespace or an assistant) is
    its own range read of a ready index, up to the LIMIT: PostgreSQL cannot read
    `IN (...)` in index order, and would sort every matching head instead (as it does
    past MAX_RANGE_READS values). Heads that fell due are read alongside.
    """
    ready = select(*_HEAD_COLUMNS).where(_IS_READY)
    branches = [ready]
    if namespaces or assistants:
        column, names = _scope_column(namespaces, assistants)
        if len(names) > MAX_RANGE_READS:
            branches = [ready.where(column.in_([bindparam(name) for name in names]))]
        else:
            branches = [ready.where(column == bindparam(name)) for name in names]
    ready_heads = [branch.order_by(*_CLAIM_ORDER).limit(bindparam("limit")) for branch in branches]
    # The first fallen-due heads of any scope, then those of this one: a condition on
    # the scope inside could steer the planner to the primary key (every head of a
    # namespace) instead of the range of fallen-due ones.
    fallen_due = _fallen_due(FALLEN_DUE_LOOK, _heads.c.assistant_id).subquery("fallen_due")
    in_scope = select(*(fallen_due.c[column.name] for column in _HEAD_COLUMNS))
    if namespaces:
        in_scope = in_scope.where(
            fallen_due.c.namespace.in_([bindparam(f"namespace_{n}") for n in range(namespaces)])
        )
    if assistants:
        in_scope = in_scope.where(
            fallen_due.c.assistant_id.in_([bindparam(f"assistant_{a}") for a in range(assistants)])
        )
    # SQLite takes ORDER BY and LIMIT in a compound's members only inside subqueries.
    members = [select(*member.subquery().c) for member in ready_heads] + [in_scope]
    union: CompoundSelect[Any] = members[0].union_all(*members[1:])
    both = union.subquery("heads")
    return select(*both.c).order_by(both.c.priority.desc(), both.c.due_us).limit(bindparam("limit"))


@functools.lru_cache(maxsize=64)
def _look_query(namespaces: int, assistants: int) -> Select[Any]:
    """Whether a head is claimable, and when the earliest delayed one falls due: one
    statement, so that a worker's look is one round trip."""
    return select(
        _claimable_query(namespaces, assistants).exists().label("ready"),
        _NEXT_DUE.scalar_subquery().label("next_due"),
    )


@functools.lru_cache(maxsize=64)
def _first_claimable_run_query(namespaces: int, assistants: int) -> Select[Any]:
    """The run of `_claimable_query`'s first head (LIMIT 1), looked up by key."""
    head = _claimable_query(namespaces, assistants).subquery("claimable")
    return _SELECT_RUN.join_from(head, _runs, _runs.c.run_id == head.c.run_id)


@functools.lru_cache(maxsize=64)
def _claim_query(namespaces: int, assistants: int) -> Select[Any]:
    """PostgreSQL (migrations 0010, 0011): the run of the first of `_claimable_query`'s
    heads whose thread's lock is free and that is still its thread's claimable head
    under the lock, in one statement. `runplane_claim_head` takes the candidates as
    arrays, each in claim order, ties broken by the head's key so that the arrays agree.
    """
    heads = _claimable_query(namespaces, assistants).cte("candidates")
    order = (heads.c.priority.desc(), heads.c.due_us, heads.c.namespace, heads.c.thread_id)

    def each(column: Any) -> Any:
        return select(func.array_agg(aggregate_order_by(column, *order))).scalar_subquery()

    claim = func.runplane_claim_head(
        cast(bindparam("lock"), Integer),
        each(heads.c.lock_key),
        each(heads.c.namespace),
        each(heads.c.thread_id),
        each(heads.c.run_id),
        cast(bindparam("now"), BigInteger),
    )
    return fields.returned_runs(claim).add_cte(heads)


@functools.cache
def _upserts(dialect: type[Dialect]) -> tuple[Any, Any]:
    """(insert unless the thread has a head, insert or replace the thread's head)."""
    insert = dialect.insert(_heads)
    keep = insert.on_conflict_do_nothing(index_elements=list(_KEY))
    replace = insert.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={
            column.name: insert.excluded[column.name]
            for column in _heads.columns
            if column.name not in _KEY
        },
    )
    return keep, replace


class ThreadHeads:
    """The thread_heads table, over the connection of one transaction."""

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self._conn = connection
        self._dialect = dialect
        self._insert_unless_headed, self._set_head = _upserts(type(dialect))

    # -- claims ------------------------------------------------------------------------------

    def look(
        self, now: int, namespaces: NamespaceSet, assistant_ids: Sequence[str]
    ) -> tuple[bool, int | None]:
        """Whether a head is claimable now, and when the earliest delayed head that is
        not due yet falls due (None if none is waiting)."""
        query, params = self._claimable(_look_query, now, namespaces, assistant_ids, 1)
        if query is None:
            return False, None
        ready, next_due = self._conn.execute(query, params).one()
        return bool(ready), next_due

    def next_due(self, now: int) -> int | None:
        """When the earliest delayed head becomes due, if any is not due yet."""
        return self._conn.execute(_NEXT_DUE, {"now": now}).scalar_one_or_none()

    def first_claimable(
        self, now: int, namespaces: NamespaceSet, assistant_ids: Sequence[str]
    ) -> Run | None:
        """The run of the first claimable head, in claim order, made safe to claim: None
        if there is none. Where concurrent claims may hold some (replicas), the first
        few heads are candidates, and the first whose thread's lock is free and that is
        still its thread's claimable head under the lock is taken, in one statement;
        where none can, the first is read with its run.
        """
        if self._dialect.serial_writes:
            query, params = self._claimable(
                _first_claimable_run_query, now, namespaces, assistant_ids, 1
            )
            row = None if query is None else self._conn.execute(query, params).first()
        else:
            row = self._claim_under_lock(now, namespaces, assistant_ids)
        return None if row is None else fields.from_row(row)

    def _claim_under_lock(
        self, now: int, namespaces: NamespaceSet, assistant_ids: Sequence[str]
    ) -> Row[Any] | None:
        """The row of the run `_claim_query` takes, its thread's lock held; None if no
        candidate could be taken."""
        query, params = self._claimable(
            _claim_query, now, namespaces, assistant_ids, self._dialect.claim_candidates
        )
        if query is None:
            return None
        params["lock"] = int(Lock.THREAD)
        for _ in range(self._dialect.claim_candidates + 1):
            row = self._conn.execute(query, params).first()
            if row is None or row.run_id is not None:
                return row
            # The candidate has no lock key (a replica of an earlier version wrote its
            # head), and nothing was locked: give it its key, and ask again.
            self._conn.execute(
                _SET_LOCK_KEY,
                {
                    "head_namespace": row.namespace,
                    "head_thread_id": row.thread_id,
                    "lock_key": lock_key(scoped_key(row.namespace, row.thread_id)),
                },
            )
        return None

    @staticmethod
    def _claimable(
        build: Callable[[int, int], Select[Any]],
        now: int,
        namespaces: NamespaceSet,
        assistant_ids: Sequence[str],
        limit: int,
    ) -> tuple[Select[Any] | None, dict[str, Any]]:
        """The query `build` makes for this scope and its parameters; no query for an
        empty set of namespaces."""
        spaces = sorted(namespaces) if namespaces is not None else []
        if namespaces is not None and not spaces:
            return None, {}
        params: dict[str, Any] = {"now": now, "limit": limit}
        params.update({f"namespace_{n}": space for n, space in enumerate(spaces)})
        params.update({f"assistant_{a}": name for a, name in enumerate(assistant_ids)})
        params.update(
            {
                f"queue_{n}_{a}": queue(space, name)
                for n, space in enumerate(spaces)
                for a, name in enumerate(assistant_ids)
            }
        )
        return build(len(spaces), len(assistant_ids)), params

    # -- stats -------------------------------------------------------------------------------

    def queues(self, now: int, namespaces: NamespaceSet) -> list[QueueCount]:
        """Claimable runs per queue (namespace and assistant), with the earliest due
        time among them, in `namespaces` (None: every namespace)."""
        ready = _QUEUE_SIZES
        params: dict[str, Any] = {"now": now}
        if namespaces is not None:
            if not namespaces:
                return []
            ready = ready.where(_IN_NAMESPACES)
            params["namespaces"] = sorted(namespaces)
        sizes: dict[str, tuple[int, int]] = {}
        # The fallen-due heads of every namespace, kept here: a namespace condition in the
        # query could steer the planner to every head of the namespace instead.
        for name, depth, oldest_due in itertools.chain(
            self._conn.execute(ready, params), self._conn.execute(_FALLEN_DUE_SIZES, params)
        ):
            before_depth, before_due = sizes.get(name, (0, oldest_due))
            sizes[name] = (before_depth + depth, min(before_due, oldest_due))
        found = []
        for name, (depth, oldest_due) in sorted(sizes.items()):
            namespace, _, assistant_id = name.partition("/")
            if namespaces is None or namespace in namespaces:
                found.append(QueueCount(namespace, assistant_id, depth, oldest_due))
        return found

    # -- upkeep ------------------------------------------------------------------------------

    def release(self, changes: Sequence[Change]) -> dict[tuple[str, str], bool]:
        """Before the runs rows of `changes` are written: drop the head of each thread
        whose inflight run one change alone ends, unless others of the thread are still
        inflight. Returns, for each such thread, whether its head went; `follow` takes
        it from there.

        Run before them, the DELETE has none of the transaction's rows to send first
        (`held_rows`): the ended run's row and its event go with the next statement,
        so that a completion costs the writer two statements instead of four.
        """
        looked = {}
        for thread, line in _lines(changes).items():
            change, before = line[0], line[0].previous
            if (
                len(line) == 1
                and change.type is ChangeType.UPDATED
                and before is not None
                and before.status.is_inflight
                and not change.run.status.is_inflight
            ):
                namespace, thread_id = thread
                ending = {"namespace": namespace, "thread_id": thread_id, "run_id": before.run_id}
                looked[thread] = bool(self._conn.execute(_DROP_HEAD_OF_LAST, ending).rowcount)
        return looked

    def follow(self, changes: Sequence[Change], released: dict[tuple[str, str], bool]) -> None:
        """Bring the heads of the threads `changes` touched in step with their runs; the
        runs rows are written already. `released`: what `release` did before."""
        now = now_us()
        for (namespace, thread_id), line in _lines(changes).items():
            dropped = released.get((namespace, thread_id))
            if dropped is None:
                if not self._follow_in_place(line, now):
                    self._find_head(namespace, thread_id, now)
            elif not dropped:
                # Other runs of the thread are inflight: the first of them is its head.
                self._find_head(namespace, thread_id, now, maybe_done=False)

    def _follow_in_place(self, line: list[Change], now: int) -> bool:
        """Follow changes that need no look at the thread's line; False if they do."""
        if all(change.type is ChangeType.CREATED for change in line):
            # New runs join the end of the line: the first is the head if it was empty.
            # Held (it cannot fail): sent with its group's, or before the next statement.
            held_rows.hold(self._conn, self._insert_unless_headed, _row(line[0].run, now))
            return True
        change = line[0]
        before, run = change.previous, change.run
        if len(line) > 1 or change.type is not ChangeType.UPDATED or before is None:
            return False
        if not _moves_head(run, before):
            return True
        if run.status.is_inflight and before.status.is_inflight:
            # Still inflight: if it is the head (a claim, a requeue, a retry), its row
            # changes; if not, the head is another run and stays as it is.
            row = _row(run, now)
            moved = {f"head_{column}": row.pop(column) for column in (*_KEY, "run_id")}
            held_rows.hold(self._conn, _MOVE_HEAD, {**moved, **row})
            return True
        return False  # it ended: if it was the head, the next run in line takes over

    def _find_head(
        self, namespace: str, thread_id: str, now: int, *, maybe_done: bool = True
    ) -> None:
        """Make the thread's first inflight run its head, or drop the head if none is left
        (which, without `maybe_done`, is known not to be the case)."""
        key = {"namespace": namespace, "thread_id": thread_id}
        if maybe_done and self._conn.execute(_DROP_HEAD_IF_DONE, key).rowcount:
            return
        first = self._conn.execute(_FIRST_INFLIGHT, key).first()
        if first is None:
            return  # no head, and nothing inflight
        head = _HeadRun(
            first.run_id,
            first.assistant_id,
            first.priority,
            first.status,
            first.created_at_us,
            first.start_after_us,
        )
        self._conn.execute(self._set_head, head.row(namespace, thread_id, now))

    def promote_due(self, now: int, limit: int) -> int:
        """Move up to `limit` delayed heads whose time has come into the ready index."""
        return int(self._conn.execute(_PROMOTE, {"now": now, "limit": limit}).rowcount)
