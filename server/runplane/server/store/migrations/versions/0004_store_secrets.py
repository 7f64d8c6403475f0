"""A table of the store's own secrets, with the key that signs ListRuns page tokens.

The key is made here, once per database, so every replica signs and checks tokens
with the same one.

Revision ID: 0004
Revises: 0003
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "store_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.bulk_insert(table, [{"name": "page_tokens", "value": secrets.token_bytes(32)}])


def downgrade() -> None:
    op.drop_table("store_secrets")
