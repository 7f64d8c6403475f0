"""Metadata filters read an index; retention finds ended runs by index.

A ListRuns filtered by metadata alone read every run of its scope and compared their
metadata. `run_metadata` holds an entry (a hash of key and value) per key of each run's
metadata, read in list order (see store/metadata_index.py); the entries of existing
runs are computed here, a batch of runs at a time.

`ix_runs_ended` orders the runs that ended by their end, for --run-retention. On
PostgreSQL, autovacuum visits the event log sooner, as compaction empties its old end.

Revision ID: 0008
Revises: 0007
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from runplane.server.store.metadata_index import index_rows

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000


def upgrade() -> None:
    op.create_table(
        "run_metadata",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("entry", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_run_metadata_entry",
        "run_metadata",
        ["entry", "created_at_us", "run_id", "namespace"],
    )
    op.create_index(
        "ix_runs_ended",
        "runs",
        ["ended_at_us"],
        sqlite_where=sa.text("ended_at_us IS NOT NULL"),
        postgresql_where=sa.text("ended_at_us IS NOT NULL"),
    )
    _index_existing_runs(op.get_bind())
    if op.get_bind().dialect.name == "postgresql":
        # Compaction deletes the oldest events a batch at a time, every round: vacuum
        # the log once 2% of it is dead, not the default 20%, so its size stays close
        # to what the retention keeps.
        op.execute("ALTER TABLE run_events SET (autovacuum_vacuum_scale_factor = 0.02)")


def _index_existing_runs(connection: sa.Connection) -> None:
    runs = sa.table(
        "runs",
        sa.column("run_id", sa.String),
        sa.column("namespace", sa.String),
        sa.column("created_at_us", sa.BigInteger),
        sa.column("metadata", sa.Text),
    )
    entries = sa.table(
        "run_metadata",
        sa.column("run_id", sa.String),
        sa.column("entry", sa.BigInteger),
        sa.column("created_at_us", sa.BigInteger),
        sa.column("namespace", sa.String),
    )
    after = ""
    while True:
        found = connection.execute(
            sa.select(runs.c.run_id, runs.c.namespace, runs.c.created_at_us, runs.c.metadata)
            .where(runs.c.run_id > after)
            .order_by(runs.c.run_id)
            .limit(_BATCH)
        ).all()
        if not found:
            return
        rows = index_rows(
            (run_id, namespace, created_at, _document(metadata))
            for run_id, namespace, created_at, metadata in found
        )
        if rows:
            connection.execute(sa.insert(entries), rows)
        after = found[-1].run_id


def _document(stored: object) -> dict[str, object]:
    # Text on SQLite; psycopg decodes PostgreSQL's jsonb itself.
    document = json.loads(stored) if isinstance(stored, str) else stored
    return document if isinstance(document, dict) else {}


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE run_events RESET (autovacuum_vacuum_scale_factor)")
    op.drop_index("ix_runs_ended", table_name="runs")
    op.drop_table("run_metadata")
