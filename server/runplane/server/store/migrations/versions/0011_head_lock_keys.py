"""Each thread head keeps the key of its thread's lock: a claim is one statement.

A claim on PostgreSQL read its candidate heads, then handed them with their lock keys
to `runplane_claim_head` (migration 0010): two round trips, one after another in the
writer's transaction. The keys are a hash the server computes (`lock_key`, which
PostgreSQL cannot), so the server now stores each head's key in the head, and a claim
passes the candidates straight from the read to the function, in one statement.

Every existing head gets its key here. A replica of the previous version, still running
beside upgraded ones, writes heads without one: `runplane_claim_head` now answers such a
candidate with a row that names only its thread, having locked nothing, and the server
fills the key in and asks again. Replicas of the previous version call the function
with keys they computed, which never come NULL, and see no change.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from runplane.server.store.dialects import lock_key, scoped_key

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5000

CLAIM_HEAD = """
CREATE OR REPLACE FUNCTION runplane_claim_head(
    lock_class integer,
    lock_keys integer[],
    head_namespaces text[],
    head_threads text[],
    head_runs text[],
    claimed_at bigint
)
RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    keyless runs;  -- every field NULL but the thread's
BEGIN
    FOR i IN 1 .. coalesce(array_length(head_runs, 1), 0) LOOP
        IF lock_keys[i] IS NULL THEN
            -- A head written without its lock's key: name its thread, and stop here.
            keyless.namespace := head_namespaces[i];
            keyless.thread_id := head_threads[i];
            RETURN NEXT keyless;
            RETURN;
        END IF;
        -- A thread another transaction holds is being changed, or claimed: try the next.
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(lock_class, lock_keys[i]);
        RETURN QUERY
            SELECT runs.* FROM runs JOIN thread_heads AS heads ON heads.run_id = runs.run_id
            WHERE heads.namespace = head_namespaces[i]
                AND heads.thread_id = head_threads[i]
                AND heads.run_id = head_runs[i]
                AND (heads.state = 'ready'
                     OR (heads.state = 'delayed' AND heads.due_us <= claimed_at));
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.add_column("thread_heads", sa.Column("lock_key", sa.Integer(), nullable=True))
    heads = sa.table(
        "thread_heads", sa.column("namespace"), sa.column("thread_id"), sa.column("lock_key")
    )
    connection = op.get_bind()
    threads = connection.execute(sa.select(heads.c.namespace, heads.c.thread_id)).all()
    keyed = heads.update().where(
        heads.c.namespace == sa.bindparam("head_namespace"),
        heads.c.thread_id == sa.bindparam("head_thread_id"),
    )
    for start in range(0, len(threads), BATCH):
        connection.execute(
            keyed,
            [
                {
                    "head_namespace": namespace,
                    "head_thread_id": thread_id,
                    "lock_key": lock_key(scoped_key(namespace, thread_id)),
                }
                for namespace, thread_id in threads[start : start + BATCH]
            ],
        )
    if op.get_context().dialect.name == "postgresql":
        op.execute(CLAIM_HEAD)


def downgrade() -> None:
    # runplane_claim_head stays: given keys, as 0010's callers give them, it is 0010's.
    op.drop_column("thread_heads", "lock_key")
