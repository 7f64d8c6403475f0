"""Runs gain namespace, created_by, trace_context, result, retry_policy and priority.

Existing runs take the defaults: namespace `default`, created by `anonymous`, no trace
context, an empty result, no retry policy, priority 5.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")
EMPTY_DOCUMENT = sa.text("'{}'")


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(
            sa.Column("namespace", sa.String(63), nullable=False, server_default="default")
        )
        runs.add_column(
            sa.Column("created_by", sa.String(256), nullable=False, server_default="anonymous")
        )
        runs.add_column(
            sa.Column("trace_context", JSONDocument, nullable=False, server_default=EMPTY_DOCUMENT)
        )
        runs.add_column(
            sa.Column("result", JSONDocument, nullable=False, server_default=EMPTY_DOCUMENT)
        )
        runs.add_column(sa.Column("retry_policy", JSONDocument, nullable=True))
        runs.add_column(sa.Column("priority", sa.SmallInteger, nullable=False, server_default="5"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        for column in (
            "priority",
            "retry_policy",
            "result",
            "trace_context",
            "created_by",
            "namespace",
        ):
            runs.drop_column(column)
