"""Tables, as typed SQLAlchemy models. Alembic migrations create them; this module
is what queries are written against.

Times are BIGINT microseconds since the epoch (UTC): one representation on SQLite
and PostgreSQL, cheap to compare, index and convert.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL compares values by content, which metadata filters rely on.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")
# Python None as SQL NULL rather than the JSON document `null`.
OptionalJSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


INFLIGHT_PREDICATE = "status IN ('pending', 'running')"
READY_PREDICATE = "state = 'ready'"
DELAYED_PREDICATE = "state = 'delayed'"
ENDED_PREDICATE = "ended_at_us IS NOT NULL"
"""Partial-index predicates. A query uses such an index only when its WHERE clause
repeats the predicate with the same literals (never bound parameters)."""


def _where(predicate: str) -> dict[str, Any]:
    """The keyword arguments that make an Index partial on both databases."""
    return {"sqlite_where": text(predicate), "postgresql_where": text(predicate)}


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(36))
    assistant_id: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    multitask_strategy: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    updated_at_us: Mapped[int] = mapped_column(BigInteger)
    revision: Mapped[int] = mapped_column(BigInteger)
    # Revision of the create: a thread's queue order, kept when a run is requeued.
    create_revision: Mapped[int] = mapped_column(BigInteger)
    # When a RUNNING run with a timeout times out (started_at + timeout), for the sweeper.
    timeout_at_us: Mapped[int | None] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    started_at_us: Mapped[int | None] = mapped_column(BigInteger)
    ended_at_us: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str] = mapped_column(Text, default="")
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    worker_id: Mapped[str] = mapped_column(String(256), default="")
    lease_expires_at_us: Mapped[int | None] = mapped_column(BigInteger)
    timeout_us: Mapped[int | None] = mapped_column(BigInteger)
    start_after_us: Mapped[int | None] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The server defaults fill rows written before these columns existed (0003).
    namespace: Mapped[str] = mapped_column(String(63), server_default="default")
    created_by: Mapped[str] = mapped_column(String(256), server_default="anonymous")
    trace_context: Mapped[dict[str, str]] = mapped_column(JSONDocument, server_default=text("'{}'"))
    result: Mapped[dict[str, Any]] = mapped_column(JSONDocument, server_default=text("'{}'"))
    retry_policy: Mapped[dict[str, Any] | None] = mapped_column(OptionalJSONDocument)
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="5")

    __table_args__ = (
        # A thread is (namespace, thread_id). Its id leads: a UUID is selective alone, and
        # a caller who reads every namespace lists a thread with no namespace to give.
        Index("ix_runs_thread", "thread_id", "namespace", "status"),
        Index("ix_runs_created", "created_at_us", "run_id"),
        Index("ix_runs_assistant_created", "assistant_id", "created_at_us"),
        # Listings confined to a namespace seek it in the order they are read.
        Index("ix_runs_namespace_created", "namespace", "created_at_us", "run_id"),
        Index(
            "ix_runs_namespace_assistant_created",
            "namespace",
            "assistant_id",
            "created_at_us",
            "run_id",
        ),
        Index("ux_runs_namespace_request", "namespace", "request_id", unique=True),
        # Runs by status (a bulk cancel reads the inflight ones); GetStats and the runs
        # gauge count the inflight ones per namespace from the index alone.
        Index("ix_runs_status_queue", "status", "namespace", "create_revision"),
        # A thread's line, to find its next head: only inflight runs are indexed. The
        # only partial index of inflight runs, so that a plan made for any thread, while
        # the table was small, cannot read a namespace's inflight runs instead (0009).
        Index(
            "ix_runs_thread_inflight",
            "namespace",
            "thread_id",
            "create_revision",
            **_where(INFLIGHT_PREDICATE),
        ),
        # What the sweeper looks for: only RUNNING runs have a lease or a timeout_at.
        Index("ix_runs_lease", "lease_expires_at_us", **_where("lease_expires_at_us IS NOT NULL")),
        Index("ix_runs_timeout", "timeout_at_us", **_where("timeout_at_us IS NOT NULL")),
        # What --run-retention deletes: runs that ended, oldest end first.
        Index("ix_runs_ended", "ended_at_us", **_where(ENDED_PREDICATE)),
    )


class ThreadHeadRow(Base):
    """The head of each thread that has inflight runs: its first inflight run (by
    creation), which is the only run of the thread a worker may claim.

    The store keeps it in step with `runs` in every write transaction (`ThreadHeads`),
    so a claim is one range read of a ready index, whatever the backlog behind the heads.
    `state` is `ready` (PENDING and due), `delayed` (PENDING, due later) or `running`.
    """

    __tablename__ = "thread_heads"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    assistant_id: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str] = mapped_column(String(320))
    """`namespace/assistant_id`: one column, so a claim for given namespaces and
    assistants is an equality that only its own index can serve."""
    priority: Mapped[int] = mapped_column(SmallInteger)
    due_us: Mapped[int] = mapped_column(BigInteger)
    """When the run may start: its creation, or its start_after when later."""
    state: Mapped[str] = mapped_column(String(8))
    lock_key: Mapped[int | None] = mapped_column(Integer)
    """The key of the thread's advisory lock (`dialects.lock_key`), so that a claim on
    PostgreSQL finds its candidates and takes a lock in one statement. NULL only in a
    head that a replica of an earlier version wrote: a claim that meets one fills it in."""


# Claim order is priority (highest first), then due time: one ready index per shape of
# claim (any assistant or given ones; any namespace or given ones), each read as a range.
_heads_order = (ThreadHeadRow.priority.desc(), ThreadHeadRow.due_us)
Index("ix_thread_heads_ready", *_heads_order, **_where(READY_PREDICATE))
Index(
    "ix_thread_heads_ready_assistant",
    ThreadHeadRow.assistant_id,
    *_heads_order,
    **_where(READY_PREDICATE),
)
Index(
    "ix_thread_heads_ready_namespace",
    ThreadHeadRow.namespace,
    *_heads_order,
    **_where(READY_PREDICATE),
)
Index("ix_thread_heads_ready_queue", ThreadHeadRow.queue, *_heads_order, **_where(READY_PREDICATE))
Index("ix_thread_heads_delayed", ThreadHeadRow.due_us, **_where(DELAYED_PREDICATE))


class RunMetadataRow(Base):
    """The metadata index (`store/metadata_index.py`): one row per key of each run's
    metadata, its entry a hash of the key and the value."""

    __tablename__ = "run_metadata"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    entry: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    namespace: Mapped[str] = mapped_column(String(63))

    __table_args__ = (
        # A filtered listing reads one entry's runs in list order; the namespace rides
        # along, so runs of other namespaces are passed over without a look at them.
        Index("ix_run_metadata_entry", "entry", "created_at_us", "run_id", "namespace"),
        {"sqlite_with_rowid": False},
    )


class RunEventRow(Base):
    """The event log: one row per committed change, keyed by its global revision."""

    __tablename__ = "run_events"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str] = mapped_column(String(36))
    committed_at_us: Mapped[int] = mapped_column(BigInteger)
    run: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    """The run after the change (for a delete: its last state)."""
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    """Of the run before an update, what watch filters read and the update changed (a
    watcher's filter matches either side); the rest is as in `run`."""


class StoreStateRow(Base):
    """A single row: the revision counter and the oldest revision still in the log.

    Every write transaction updates it as its last statement, so its row lock
    orders commits and revisions are handed out in commit order with no gaps.
    """

    __tablename__ = "store_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger)
    compact_revision: Mapped[int] = mapped_column(BigInteger)


class StoreSecretRow(Base):
    """Keys the server keeps in the store, so that every replica shares them (0004)."""

    __tablename__ = "store_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
