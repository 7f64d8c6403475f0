"""Retry policies on a real server, SQLite and PostgreSQL: a worker's retryable ERROR or
an expired lease sends the run back in line after its backoff, keeping its place at the
head of its thread, until its attempts run out.

Backoffs are asserted from the runs the server reports, never from the test's clock: a
retry sets `start_after` = `updated_at` + the backoff of the attempt that failed, and
the next claim (`updated_at` of the RUNNING event) comes no earlier than `start_after`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from runplane.client import (
    AsyncClient,
    AsyncWorker,
    EventType,
    RetryableError,
    Run,
    RunEvent,
    RunRetryPolicy,
    RunStatus,
)
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.stubs import refused, run_service, seconds
from tests.support.watching import cancel

pb = run_service_pb2
Stub = run_service_pb2_grpc.RunServiceStub


@pytest.fixture(scope="module")
def stub(server_address: str) -> Iterator[Stub]:
    with run_service(server_address) as stub:
        yield stub


def backoff_of(run: run_pb2.Run) -> int:
    """Microseconds between a retry and the time the run is due again (proto Run)."""
    return int(run.start_after.ToMicroseconds() - run.updated_at.ToMicroseconds())


# -- through the client and its Worker -------------------------------------------------------


async def _work_and_watch(
    server_address: str, assistant: str, handler: Any, **create: Any
) -> tuple[Run, list[RunEvent]]:
    """Create a run, work it with an AsyncWorker, and return it as it ended with every
    change it went through, as a watcher saw them."""
    async with AsyncClient(server_address) as client:
        created = await client.create_run(assistant, **create)
        worker = AsyncWorker(client, handler, assistant_ids=[assistant], claim_wait=1)
        working = asyncio.ensure_future(worker.run(handle_signals=False))
        try:

            async def watch() -> list[RunEvent]:
                stream = client.watch_run(created.run_id, start_revision=created.revision)
                return [event async for event in stream]

            events = await asyncio.wait_for(watch(), 30)
        finally:
            worker.stop()
            await asyncio.wait_for(working, 10)
        return await client.wait_run(created.run_id, timeout=10), events


def _retries(events: list[RunEvent]) -> list[Run]:
    """The runs of the UPDATED events that sent the run back in line."""
    return [
        event.run
        for event in events
        if event.type is EventType.UPDATED and event.run.status is RunStatus.PENDING
    ]


def _wait(retry: Run) -> timedelta:
    """The backoff a retry set: from the retry to when the run is due again."""
    assert retry.start_after is not None
    return retry.start_after - retry.updated_at


def _claims(events: list[RunEvent]) -> list[Run]:
    return [event.run for event in events if event.run.status is RunStatus.RUNNING]


def test_a_run_that_fails_twice_with_retryable_errors_succeeds_on_its_third_attempt(
    server_address: str, assistant: str
) -> None:
    failures: list[int] = []

    async def flaky(run: Run) -> dict[str, Any]:
        if run.attempt < 3:
            failures.append(run.attempt)
            raise RetryableError(f"flaky on attempt {run.attempt}")
        return {"answer": 42, "attempt": run.attempt}

    policy = RunRetryPolicy(
        max_attempts=5,
        initial_backoff=timedelta(milliseconds=200),
        backoff_coefficient=3,
        maximum_backoff=timedelta(seconds=10),
    )
    final, events = asyncio.run(
        _work_and_watch(server_address, assistant, flaky, retry_policy=policy, priority=7)
    )

    assert (final.status, final.attempt, final.error) == (RunStatus.SUCCESS, 3, "")
    assert final.result == {"answer": 42, "attempt": 3}
    assert final.metadata == {}
    assert (final.retry_policy, final.priority) == (policy, 7)
    assert failures == [1, 2]
    retries, claims = _retries(events), _claims(events)
    assert [run.attempt for run in claims] == [1, 2, 3]
    assert [(run.attempt, run.error, run.worker_id) for run in retries] == [
        (1, "flaky on attempt 1", ""),
        (2, "flaky on attempt 2", ""),
    ]
    # attempt n waits min(0.2 s * 3^(n-1), 10 s): 0.2 s, then 0.6 s
    assert [_wait(run) for run in retries] == [
        timedelta(milliseconds=200),
        timedelta(milliseconds=600),
    ]
    assert all(run.lease_expires_at is None and run.ended_at is None for run in retries)
    for retry, next_claim in zip(retries, claims[1:], strict=True):
        assert retry.start_after is not None
        assert next_claim.updated_at >= retry.start_after
    assert [event.type for event in events] == [EventType.CREATED] + [EventType.UPDATED] * 6


def test_a_run_that_keeps_failing_ends_as_error_with_its_last_message(
    server_address: str, assistant: str
) -> None:
    async def failing(run: Run) -> dict[str, Any]:
        raise RetryableError(f"upstream down on attempt {run.attempt}")

    policy = RunRetryPolicy(max_attempts=2, initial_backoff=timedelta(milliseconds=50))
    final, events = asyncio.run(
        _work_and_watch(server_address, assistant, failing, retry_policy=policy)
    )

    assert (final.status, final.attempt) == (RunStatus.ERROR, 2)
    assert final.error == "upstream down on attempt 2"
    assert final.ended_at is not None
    assert [run.attempt for run in _claims(events)] == [1, 2]
    (retry,) = _retries(events)
    assert _wait(retry) == timedelta(milliseconds=50)


def test_a_non_retryable_error_ends_the_run_at_once_whatever_its_policy(
    server_address: str, assistant: str
) -> None:
    async def broken(run: Run) -> dict[str, Any]:
        raise ValueError("bad input")

    policy = RunRetryPolicy(max_attempts=5, initial_backoff=timedelta(milliseconds=50))
    final, events = asyncio.run(
        _work_and_watch(server_address, assistant, broken, retry_policy=policy)
    )

    assert (final.status, final.attempt, final.error) == (RunStatus.ERROR, 1, "bad input")
    assert _retries(events) == []
    assert [event.run.status for event in events] == [
        RunStatus.PENDING,
        RunStatus.RUNNING,
        RunStatus.ERROR,
    ]


def test_a_retryable_error_without_a_policy_is_final(server_address: str, assistant: str) -> None:
    async def failing(run: Run) -> dict[str, Any]:
        raise RetryableError("try me again")

    final, events = asyncio.run(_work_and_watch(server_address, assistant, failing))

    assert (final.status, final.attempt, final.error) == (RunStatus.ERROR, 1, "try me again")
    assert final.retry_policy is None
    assert _retries(events) == []


# -- raw stubs ------------------------------------------------------------------------------


def _create(
    stub: Stub, assistant: str, policy: run_pb2.RetryPolicy | None, **fields: Any
) -> run_pb2.Run:
    request = pb.CreateRunRequest(assistant_id=assistant, **fields)
    if policy is not None:
        request.retry_policy.CopyFrom(policy)
    return stub.CreateRun(request)


def _claim_response(
    stub: Stub, assistant: str, worker: str, wait: float, lease: float = 30
) -> pb.ClaimRunResponse:
    request = pb.ClaimRunRequest(
        worker_id=worker,
        assistant_ids=[assistant],
        wait=seconds(wait),
        lease_duration=seconds(lease),
    )
    return stub.ClaimRun(request)


def _claim(
    stub: Stub, assistant: str, worker: str, wait: float = 10, lease: float = 30
) -> run_pb2.Run:
    response = _claim_response(stub, assistant, worker, wait, lease)
    assert response.HasField("run"), "nothing was claimable"
    return response.run


def _nothing_claimable(stub: Stub, assistant: str) -> bool:
    return not _claim_response(stub, assistant, "idle", wait=0).HasField("run")


def _fail(stub: Stub, run: run_pb2.Run, worker: str, error: str, **fields: Any) -> run_pb2.Run:
    return stub.CompleteRun(
        pb.CompleteRunRequest(
            run_id=run.run_id,
            worker_id=worker,
            status=run_pb2.RUN_STATUS_ERROR,
            error=error,
            retryable=True,
            **fields,
        )
    )


def _changes(
    stub: Stub, run: run_pb2.Run, until: run_pb2.RunStatus.ValueType
) -> list[run_pb2.RunEvent]:
    """The run's UPDATED events from the event log, from its creation to `until` (a run
    status: the first change that reaches it)."""
    stream = stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id, start_revision=run.revision))
    changes: list[run_pb2.RunEvent] = []
    for response in stream:
        changes.extend(
            event for event in response.events if event.type == run_pb2.EVENT_TYPE_UPDATED
        )
        if changes and changes[-1].run.status == until:
            break
    cancel(stream)
    return changes


def test_complete_run_error_retryable_sends_the_run_back_with_its_backoff(
    stub: Stub, assistant: str
) -> None:
    policy = run_pb2.RetryPolicy(
        max_attempts=3,
        initial_backoff=seconds(0.1),
        backoff_coefficient=10,
        maximum_backoff=seconds(0.5),
    )
    created = _create(stub, assistant, policy)
    partial = struct_pb2.Struct()
    partial.update({"pages": 3})

    claimed = _claim(stub, assistant, "w1")
    retried = _fail(stub, claimed, "w1", "rate limited", result=partial)
    assert retried.status == run_pb2.RUN_STATUS_PENDING
    assert (retried.attempt, retried.error, retried.worker_id) == (1, "rate limited", "")
    assert not retried.HasField("lease_expires_at")
    assert not retried.HasField("ended_at")
    assert backoff_of(retried) == 100_000
    assert json_format.MessageToDict(retried.result) == {"pages": 3}
    assert stub.GetRun(pb.GetRunRequest(run_id=created.run_id)) == retried
    lost = refused(lambda: _fail(stub, claimed, "w1", "twice"))
    assert (lost.code, lost.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")

    second = _claim(stub, assistant, "w2")
    assert (second.run_id, second.attempt) == (created.run_id, 2)
    assert second.updated_at.ToMicroseconds() >= retried.start_after.ToMicroseconds()

    # 0.1 s * 10 = 1 s, capped at 0.5 s
    again = _fail(stub, second, "w2", "rate limited again")
    assert (again.status, again.attempt) == (run_pb2.RUN_STATUS_PENDING, 2)
    assert backoff_of(again) == 500_000

    third = _claim(stub, assistant, "w3")
    final = _fail(stub, third, "w3", "gave up")
    assert (final.status, final.attempt, final.error) == (run_pb2.RUN_STATUS_ERROR, 3, "gave up")
    assert final.HasField("ended_at")
    changes = _changes(stub, created, run_pb2.RUN_STATUS_ERROR)
    assert [(change.run.status, change.run.attempt) for change in changes] == [
        (run_pb2.RUN_STATUS_RUNNING, 1),
        (run_pb2.RUN_STATUS_PENDING, 1),
        (run_pb2.RUN_STATUS_RUNNING, 2),
        (run_pb2.RUN_STATUS_PENDING, 2),
        (run_pb2.RUN_STATUS_RUNNING, 3),
        (run_pb2.RUN_STATUS_ERROR, 3),
    ]
    assert [backoff_of(c.run) for c in changes if c.run.status == run_pb2.RUN_STATUS_PENDING] == [
        100_000,
        500_000,
    ]


def test_a_policy_of_one_attempt_and_one_without_settings_take_their_limits(
    stub: Stub, assistant: str
) -> None:
    once = _create(stub, assistant, run_pb2.RetryPolicy(max_attempts=1))
    claimed = _claim(stub, assistant, "w1")
    assert claimed.run_id == once.run_id
    ended = _fail(stub, claimed, "w1", "no second chance")
    assert (ended.status, ended.error) == (run_pb2.RUN_STATUS_ERROR, "no second chance")

    # Unset: the server's --max-attempts (3), 1 s backoff doubling.
    defaults = _create(stub, assistant, run_pb2.RetryPolicy())
    claimed = _claim(stub, assistant, "w1")
    retried = _fail(stub, claimed, "w1", "first")
    assert (retried.run_id, retried.status) == (defaults.run_id, run_pb2.RUN_STATUS_PENDING)
    assert backoff_of(retried) == 1_000_000


def test_a_retried_run_keeps_its_place_at_the_head_of_its_thread(
    stub: Stub, assistant: str
) -> None:
    policy = run_pb2.RetryPolicy(max_attempts=3, initial_backoff=seconds(0.3))
    first = _create(stub, assistant, policy)
    behind = _create(stub, assistant, None, thread_id=first.thread_id, priority=9)
    claimed = _claim(stub, assistant, "w1")
    assert claimed.run_id == first.run_id
    # Another thread's run, due before the retry is: once both are due, it goes first.
    elsewhere = _create(stub, assistant, None)

    retried = _fail(stub, claimed, "w1", "once more")
    assert retried.status == run_pb2.RUN_STATUS_PENDING
    due = retried.start_after.ToMicroseconds() / 1e6
    time.sleep(max(0.0, due - time.time()) + 0.05)  # both due now; not an assertion

    claims = [_claim(stub, assistant, "w2", wait=0) for _ in range(2)]
    assert [claim.run_id for claim in claims] == [elsewhere.run_id, first.run_id]
    assert claims[1].attempt == 2
    assert claims[1].updated_at.ToMicroseconds() >= retried.start_after.ToMicroseconds()
    # The run behind it, of a higher priority, waited for it all along.
    assert _nothing_claimable(stub, assistant)
    for claim in claims:
        stub.CompleteRun(
            pb.CompleteRunRequest(
                run_id=claim.run_id, worker_id="w2", status=run_pb2.RUN_STATUS_SUCCESS
            )
        )
    assert _claim(stub, assistant, "w3").run_id == behind.run_id


def test_an_expired_lease_is_retried_with_the_policy_backoff(stub: Stub, assistant: str) -> None:
    policy = run_pb2.RetryPolicy(
        max_attempts=2, initial_backoff=seconds(0.3), backoff_coefficient=1
    )
    created = _create(stub, assistant, policy)
    _claim(stub, assistant, "w1", lease=0.05)  # and never heartbeats
    (claimed, requeued) = _changes(stub, created, run_pb2.RUN_STATUS_PENDING)

    retry = requeued.run
    assert (claimed.run.status, retry.attempt, retry.worker_id) == (
        run_pb2.RUN_STATUS_RUNNING,
        1,
        "",
    )
    assert retry.error == "lease of worker w1 expired on attempt 1 of 2"
    assert backoff_of(retry) == 300_000
    assert not retry.HasField("lease_expires_at")

    again = _claim(stub, assistant, "w2", lease=0.05)
    assert (again.run_id, again.attempt) == (created.run_id, 2)
    assert again.updated_at.ToMicroseconds() >= retry.start_after.ToMicroseconds()
    changes = _changes(stub, created, run_pb2.RUN_STATUS_ERROR)
    final = changes[-1].run
    assert (final.status, final.attempt) == (run_pb2.RUN_STATUS_ERROR, 2)
    assert final.error == "lease of worker w2 expired on attempt 2 of 2"
    assert len(changes) == 4


def test_an_expired_lease_without_a_policy_is_requeued_at_once(stub: Stub, assistant: str) -> None:
    created = _create(stub, assistant, None)
    _claim(stub, assistant, "w1", lease=0.05)
    (_, requeued) = _changes(stub, created, run_pb2.RUN_STATUS_PENDING)
    assert requeued.run.error == "lease of worker w1 expired on attempt 1 of 3"
    assert not requeued.run.HasField("start_after")
