"""Runs, the event log and the revision counter.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("thread_id", sa.String(36), nullable=False),
        sa.Column("assistant_id", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("multitask_strategy", sa.String(16), nullable=False),
        sa.Column("metadata", JSONDocument, nullable=False),
        sa.Column("kwargs", JSONDocument, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("create_revision", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at_us", sa.BigInteger),
        sa.Column("ended_at_us", sa.BigInteger),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("cancel_reason", sa.Text, nullable=False),
        sa.Column("worker_id", sa.String(256), nullable=False),
        sa.Column("lease_expires_at_us", sa.BigInteger),
        sa.Column("timeout_us", sa.BigInteger),
        sa.Column("start_after_us", sa.BigInteger),
        sa.Column("request_id", sa.String(128), unique=True),
    )
    op.create_index("ix_runs_thread_status", "runs", ["thread_id", "status"])
    op.create_index("ix_runs_created", "runs", ["created_at_us", "run_id"])
    op.create_index("ix_runs_assistant_created", "runs", ["assistant_id", "created_at_us"])
    op.create_index("ix_runs_status_queue", "runs", ["status", "create_revision"])

    op.create_table(
        "run_events",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("committed_at_us", sa.BigInteger, nullable=False),
        sa.Column("run", JSONDocument, nullable=False),
        sa.Column("previous", JSONDocument),
    )

    state = op.create_table(
        "store_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("compact_revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "revision": 0, "compact_revision": 0}])


def downgrade() -> None:
    op.drop_table("store_state")
    op.drop_table("run_events")
    op.drop_table("runs")
