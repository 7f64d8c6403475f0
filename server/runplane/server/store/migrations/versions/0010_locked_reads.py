"""A lock and the read it guards in one round trip (PostgreSQL).

Under a thread's advisory lock, a write reads the run it changes again: the read must
see everything committed by the transaction that held the lock before, so it has to be
a statement of its own, taken after the lock (a statement's snapshot is taken when it
starts). That cost a completion three round trips to the database (find the run's
thread, lock it, read the run) and a claim two per candidate (try the lock, check the
head), one after another in the writer's single transaction.

In a PL/pgSQL function each statement takes its own snapshot, so these functions take
the lock and then read, in one call:

- `runplane_lock_run` locks a thread and reads one run of it, for change (or, told not
  to wait, says that another transaction holds the lock);
- `runplane_claim_head` tries the lock of each candidate head in turn and returns the
  run of the first one that is still its thread's claimable head.

The lock keys are computed by the server, as before: replicas of the previous version
lock the same keys. SQLite takes one writer at a time and needs neither.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_RUN = """
CREATE FUNCTION runplane_lock_run(
    lock_class integer, lock_key integer, wanted text, may_wait boolean
)
RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    busy runs;  -- every field NULL
BEGIN
    IF may_wait THEN
        PERFORM pg_advisory_xact_lock(lock_class, lock_key);
    ELSIF NOT pg_try_advisory_xact_lock(lock_class, lock_key) THEN
        -- Another transaction holds the lock: one row of NULLs says so.
        RETURN NEXT busy;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM runs WHERE run_id = wanted FOR UPDATE;
END
$$
"""

CLAIM_HEAD = """
CREATE FUNCTION runplane_claim_head(
    lock_class integer,
    lock_keys integer[],
    head_namespaces text[],
    head_threads text[],
    head_runs text[],
    claimed_at bigint
)
RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(head_runs, 1), 0) LOOP
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
    if op.get_context().dialect.name == "postgresql":
        op.execute(LOCK_RUN)
        op.execute(CLAIM_HEAD)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION runplane_claim_head")
        op.execute("DROP FUNCTION runplane_lock_run")
