"""Index the claim queue by assistant, and PENDING runs by start_after.

A worker claiming for given assistants walked every PENDING run in queue order
until it met one of theirs, and a worker with nothing to claim scanned every
PENDING run for the next start_after: a backlog of another assistant's runs made
every claim and every idle wake-up slow. Both are index seeks now.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_runs_assistant_status_queue", "runs", ["assistant_id", "status", "create_revision"]
    )
    op.create_index("ix_runs_status_start_after", "runs", ["status", "start_after_us"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_start_after", table_name="runs")
    op.drop_index("ix_runs_assistant_status_queue", table_name="runs")
