"""Namespaces isolate tenants: request_id is unique per namespace, a thread is
(namespace, thread_id), and listings confined to a namespace have indexes that lead
with it.

A repeated request_id returned the first run whatever its namespace; now each namespace
has its own keys. Listing the newest runs of a namespace (or of an assistant in it)
walked the newest runs of every namespace, skipping the others'; now it seeks. The
thread index gains the namespace after the thread id, which stays first: a thread id
is a UUID, and a caller who reads every namespace lists a thread without naming one.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0001 declared request_id UNIQUE without a name: PostgreSQL calls it runs_request_id_key;
# SQLite has no name for it, so the table is rebuilt with this name given to find it by.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _request_id_unique() -> str:
    sqlite = op.get_context().dialect.name == "sqlite"
    return "uq_runs_request_id" if sqlite else "runs_request_id_key"


def upgrade() -> None:
    with op.batch_alter_table("runs", naming_convention=_SQLITE_NAMES) as runs:
        runs.drop_constraint(_request_id_unique(), type_="unique")
    op.create_index("ux_runs_namespace_request", "runs", ["namespace", "request_id"], unique=True)
    op.create_index("ix_runs_thread", "runs", ["thread_id", "namespace", "status"])
    op.drop_index("ix_runs_thread_status", table_name="runs")
    op.create_index("ix_runs_namespace_created", "runs", ["namespace", "created_at_us", "run_id"])
    op.create_index(
        "ix_runs_namespace_assistant_created",
        "runs",
        ["namespace", "assistant_id", "created_at_us", "run_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_runs_namespace_assistant_created", table_name="runs")
    op.drop_index("ix_runs_namespace_created", table_name="runs")
    op.create_index("ix_runs_thread_status", "runs", ["thread_id", "status"])
    op.drop_index("ix_runs_thread", table_name="runs")
    op.drop_index("ux_runs_namespace_request", table_name="runs")
    # Fails if two namespaces use one request_id: they cannot share one key again.
    with op.batch_alter_table("runs") as runs:
        runs.create_unique_constraint(_request_id_unique(), ["request_id"])
