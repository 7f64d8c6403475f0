"""Claims read thread heads; the sweeper reads leases and timeouts from indexes.

A claim was an anti-join over every PENDING run ("no earlier inflight run on the same
thread"), whose plan PostgreSQL chose from statistics: before an ANALYZE it scanned the
backlog (151 ms per claim at 76k PENDING runs, 7 ms after). `thread_heads` holds each
thread's first inflight run, its priority, due time and state, and a claim reads it as
one range of a partial index. The heads of existing threads are filled in here.

The runs table loses the indexes only that claim used, and gains the partial indexes
that find a thread's next run, an expired lease, and a run past its timeout (from the
new `timeout_at_us`, set while a run with a timeout is RUNNING).

Revision ID: 0006
Revises: 0005
"""

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INFLIGHT = "status IN ('pending', 'running')"
READY = "state = 'ready'"
DELAYED = "state = 'delayed'"


def _where(predicate: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(predicate), "postgresql_where": sa.text(predicate)}


def upgrade() -> None:
    op.create_table(
        "thread_heads",
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("thread_id", sa.String(36), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("assistant_id", sa.String(256), nullable=False),
        sa.Column("queue", sa.String(320), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
    )
    order: list[str | sa.TextClause] = [sa.text("priority DESC"), "due_us"]
    op.create_index("ix_thread_heads_ready", "thread_heads", order, **_where(READY))
    op.create_index(
        "ix_thread_heads_ready_assistant",
        "thread_heads",
        ["assistant_id", *order],
        **_where(READY),
    )
    op.create_index(
        "ix_thread_heads_ready_namespace", "thread_heads", ["namespace", *order], **_where(READY)
    )
    op.create_index(
        "ix_thread_heads_ready_queue", "thread_heads", ["queue", *order], **_where(READY)
    )
    op.create_index("ix_thread_heads_delayed", "thread_heads", ["due_us"], **_where(DELAYED))

    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("timeout_at_us", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE runs SET timeout_at_us = started_at_us + timeout_us "
        "WHERE status = 'running' AND started_at_us IS NOT NULL AND timeout_us IS NOT NULL"
    )
    op.drop_index("ix_runs_assistant_status_queue", table_name="runs")
    op.drop_index("ix_runs_status_start_after", table_name="runs")
    op.create_index(
        "ix_runs_thread_inflight",
        "runs",
        ["namespace", "thread_id", "create_revision"],
        **_where(INFLIGHT),
    )
    op.create_index(
        "ix_runs_lease",
        "runs",
        ["lease_expires_at_us"],
        **_where("lease_expires_at_us IS NOT NULL"),
    )
    op.create_index(
        "ix_runs_timeout", "runs", ["timeout_at_us"], **_where("timeout_at_us IS NOT NULL")
    )

    # Each thread's head: its first inflight run by creation.
    op.get_bind().execute(
        sa.text(
            "INSERT INTO thread_heads "
            "(namespace, thread_id, run_id, assistant_id, queue, priority, due_us, state) "
            "SELECT namespace, thread_id, run_id, assistant_id, "
            "namespace || '/' || assistant_id, priority, "
            "CASE WHEN start_after_us > created_at_us THEN start_after_us "
            "ELSE created_at_us END, "
            "CASE WHEN status = 'running' THEN 'running' "
            "WHEN start_after_us > :now THEN 'delayed' ELSE 'ready' END "
            f"FROM runs AS head WHERE {INFLIGHT} AND NOT EXISTS ("
            "SELECT 1 FROM runs AS earlier WHERE earlier.namespace = head.namespace "
            "AND earlier.thread_id = head.thread_id "
            "AND earlier.status IN ('pending', 'running') "
            "AND earlier.create_revision < head.create_revision)"
        ),
        {"now": time.time_ns() // 1000},
    )


def downgrade() -> None:
    op.drop_index("ix_runs_timeout", table_name="runs")
    op.drop_index("ix_runs_lease", table_name="runs")
    op.drop_index("ix_runs_thread_inflight", table_name="runs")
    op.create_index("ix_runs_status_start_after", "runs", ["status", "start_after_us"])
    op.create_index(
        "ix_runs_assistant_status_queue", "runs", ["assistant_id", "status", "create_revision"]
    )
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("timeout_at_us")
    op.drop_table("thread_heads")
