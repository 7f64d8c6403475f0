"""Inflight runs are counted per namespace and status from an index of their own.

GetStats and the `runplane_runs` gauge ask how many PENDING and RUNNING runs each
namespace holds. A partial index of (status, namespace) over inflight runs answers it
by reading only that index, in the order of the grouping, however many finished runs
the table keeps.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INFLIGHT = "status IN ('pending', 'running')"


def upgrade() -> None:
    op.create_index(
        "ix_runs_inflight_status_namespace",
        "runs",
        ["status", "namespace"],
        sqlite_where=sa.text(INFLIGHT),
        postgresql_where=sa.text(INFLIGHT),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_inflight_status_namespace", table_name="runs")
