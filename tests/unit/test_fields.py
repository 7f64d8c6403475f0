"""The field map: one declaration gives the row, the changed columns and the event-log JSON."""

from __future__ import annotations

import dataclasses
import json

from runplane.server.records import MultitaskStrategy, RetryPolicy, Run, RunStatus
from runplane.server.store import fields
from runplane.server.store.dialects import dumps


def _full_run() -> Run:
    """A run with no field left at its default."""
    return Run(
        run_id="run",
        thread_id="thread",
        assistant_id="agent",
        status=RunStatus.RUNNING,
        multitask_strategy=MultitaskStrategy.REJECT,
        created_at=1,
        updated_at=2,
        metadata={"team": "search"},
        kwargs={"input": [1, 2]},
        revision=3,
        attempt=4,
        started_at=5,
        ended_at=6,
        error="boom",
        cancel_reason="stop",
        worker_id="w1",
        lease_expires_at=7,
        timeout=8,
        start_after=9,
        request_id="req",
        namespace="team-a",
        created_by="checkout",
        trace_context={"traceparent": "00-abc-def-01"},
        result={"reply": "done"},
        retry_policy=RetryPolicy(
            max_attempts=5, initial_backoff=10, backoff_coefficient=2.5, maximum_backoff=11
        ),
        priority=9,
    )


def test_every_field_survives_the_event_log_and_a_row() -> None:
    run = _full_run()
    defaults = Run("r", "t", "a", RunStatus.PENDING, MultitaskStrategy.ENQUEUE, 0, 0)
    assert all(getattr(run, field.name) != getattr(defaults, field.name) for field in fields.FIELDS)
    stored = fields.stored_values(run)
    assert fields.from_json(json.loads(dumps(fields.to_json(stored)))) == run
    assert fields.from_row(stored) == run
    assert set(fields.row_values(stored)) == set(fields.COLUMNS)


def test_an_entry_logged_before_a_field_existed_reads_with_its_default() -> None:
    document = fields.to_json(fields.stored_values(_full_run()))
    for name in ("namespace", "created_by", "trace_context", "result", "retry_policy", "priority"):
        del document[name]
    run = fields.from_json(document)
    assert (run.namespace, run.created_by, run.priority) == ("default", "anonymous", 5)
    assert (run.trace_context, run.result, run.retry_policy) == ({}, {}, None)


def test_an_update_writes_only_the_columns_that_changed() -> None:
    before = _full_run()
    after = dataclasses.replace(
        before, status=RunStatus.SUCCESS, revision=12, ended_at=13, lease_expires_at=None
    )
    assert fields.changed_values(after, before) == {
        "status": "success",
        "revision": 12,
        "ended_at_us": 13,
        "lease_expires_at_us": None,
    }
    policy = RetryPolicy(max_attempts=1)
    assert fields.changed_values(dataclasses.replace(before, retry_policy=policy), before) == {
        "retry_policy": dataclasses.asdict(policy)
    }


def test_the_log_keeps_of_the_run_before_what_filters_read_and_changed() -> None:
    before = _full_run()
    after = dataclasses.replace(
        before,
        status=RunStatus.SUCCESS,
        metadata={"team": "search", "tokens": 12},
        kwargs={"input": "other"},
        revision=4,
    )
    kept = fields.previous_json(before, after)
    assert kept == {"status": "running", "metadata": {"team": "search"}}
    read = fields.from_json_pair(fields.to_json(fields.stored_values(after)), kept)
    assert (read.status, read.metadata) == (before.status, before.metadata)
    assert read.kwargs == after.kwargs
    # A log written before kept the whole run, and reads back as it was.
    whole = fields.to_json(fields.stored_values(before))
    assert fields.from_json_pair(fields.to_json(fields.stored_values(after)), whole) == before
    # JSON values that differ only where Python's == cannot tell are kept.
    flag = dataclasses.replace(before, metadata={"team": True})
    assert fields.previous_json(flag, dataclasses.replace(flag, metadata={"team": 1})) == {
        "metadata": {"team": True}
    }
