"""Inflight runs are counted from the status index; a thread's lookup has one index.

0007 gave the inflight counts (GetStats, the `runplane_runs` gauge) a partial index of
(status, namespace) over inflight runs. Its predicate is the one of the threads' lines
(ix_runs_thread_inflight), and while the tables were small PostgreSQL could plan a
thread's lookup on it: a scan of the namespace's inflight runs, which a cached plan
kept as the tables grew. ix_runs_status_queue now orders each status by namespace, so
the counts read its PENDING and RUNNING ranges in the order they group them, and the
0007 index goes: one index fewer for every write to keep.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INFLIGHT = "status IN ('pending', 'running')"


def upgrade() -> None:
    op.drop_index("ix_runs_inflight_status_namespace", table_name="runs")
    op.drop_index("ix_runs_status_queue", table_name="runs")
    op.create_index("ix_runs_status_queue", "runs", ["status", "namespace", "create_revision"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_queue", table_name="runs")
    op.create_index("ix_runs_status_queue", "runs", ["status", "create_revision"])
    op.create_index(
        "ix_runs_inflight_status_namespace",
        "runs",
        ["status", "namespace"],
        sqlite_where=sa.text(INFLIGHT),
        postgresql_where=sa.text(INFLIGHT),
    )
