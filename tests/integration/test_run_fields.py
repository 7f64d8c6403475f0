"""The v0.2 fields of a run (namespace, created_by, trace_context, result, retry_policy,
priority) through raw stubs, on SQLite and PostgreSQL: stored at create or completion,
the same through GetRun, ListRuns, live watches and the event log; bad values are
INVALID_ARGUMENT with field violations and write nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.stubs import refused, run_service, seconds
from tests.support.watching import cancel

pb = run_service_pb2
Stub = run_service_pb2_grpc.RunServiceStub


@pytest.fixture(scope="module")
def stub(server_address: str) -> Iterator[Stub]:
    with run_service(server_address) as stub:
        yield stub


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def thread_runs(stub: Stub, thread_id: str) -> list[run_pb2.Run]:
    request = pb.ListRunsRequest(filter=pb.RunFilter(thread_id=thread_id))
    return list(stub.ListRuns(request).runs)


def watched(responses: Iterable[pb.WatchRunsResponse], upto: int) -> list[run_pb2.Run]:
    """The runs of the events a stream delivers until its message at `upto`."""
    runs: list[run_pb2.Run] = []
    for response in responses:
        runs.extend(event.run for event in response.events)
        if response.revision >= upto:
            break
    cancel(responses)
    return runs


def replayed(stub: Stub, run: run_pb2.Run, upto: int) -> list[run_pb2.Run]:
    """The run's changes from `run.revision` to `upto`, as read back from the event log."""
    request = pb.WatchRunsRequest(
        filter=pb.RunFilter(thread_id=run.thread_id), start_revision=run.revision
    )
    return watched(stub.WatchRuns(request, timeout=20), upto)


POLICY = run_pb2.RetryPolicy(
    max_attempts=4,
    initial_backoff=seconds(1.5),
    backoff_coefficient=3.0,
    maximum_backoff=seconds(60),
)


def test_a_plain_create_gets_the_defaults(stub: Stub) -> None:
    run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"))
    assert (run.namespace, run.created_by, run.priority) == ("default", "anonymous", 5)
    assert not run.HasField("retry_policy")
    assert not run.HasField("result")
    assert dict(run.trace_context) == {}


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (
            {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"},
            {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"},
        ),
        ({"traceparent": TRACEPARENT}, {"traceparent": TRACEPARENT}),
        # Not W3C: ignored, as the recommendation asks, and the create still succeeds.
        ({"traceparent": "00-not-a-trace-01", "tracestate": "vendor=abc"}, {}),
        ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, {}),
        ({"traceparent": TRACEPARENT.upper()}, {}),
        ({"tracestate": "vendor=abc"}, {}),
        ({"traceparent": TRACEPARENT, "tracestate": "x" * 513}, {"traceparent": TRACEPARENT}),
    ],
)
def test_create_keeps_the_callers_trace_context(
    stub: Stub, sent: dict[str, str], kept: dict[str, str]
) -> None:
    run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent"), metadata=tuple(sent.items()))
    assert dict(run.trace_context) == kept
    assert dict(stub.GetRun(pb.GetRunRequest(run_id=run.run_id)).trace_context) == kept
    assert [dict(r.trace_context) for r in thread_runs(stub, run.thread_id)] == [kept]
    assert [dict(r.trace_context) for r in replayed(stub, run, run.revision)] == [kept]


def test_namespace_priority_and_retry_policy_are_the_same_everywhere(stub: Stub) -> None:
    request = pb.CreateRunRequest(
        assistant_id="agent",
        thread_id=str(uuid.uuid4()),
        namespace="team-a",
        priority=9,
        retry_policy=POLICY,
    )
    run = stub.CreateRun(request)
    assert (run.namespace, run.priority, run.created_by) == ("team-a", 9, "anonymous")
    assert run.retry_policy == POLICY
    # From the event log first: no stream has been sent this change yet.
    assert replayed(stub, run, run.revision) == [run]
    assert stub.GetRun(pb.GetRunRequest(run_id=run.run_id)) == run
    assert thread_runs(stub, run.thread_id) == [run]
    initial = stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=20)
    assert watched(initial, run.revision) == [run]

    live = stub.WatchRuns(
        pb.WatchRunsRequest(filter=pb.RunFilter(thread_id=run.thread_id)), timeout=20
    )
    next(iter(live))  # the stream has started: it will see the next create
    queued = stub.CreateRun(request)
    assert watched(live, queued.revision) == [queued]
    assert (queued.namespace, queued.priority, queued.retry_policy) == ("team-a", 9, POLICY)


def test_an_explicit_priority_of_zero_is_kept(stub: Stub) -> None:
    run = stub.CreateRun(pb.CreateRunRequest(assistant_id="agent", priority=0))
    assert run.priority == 0
    assert stub.GetRun(pb.GetRunRequest(run_id=run.run_id)).priority == 0


def test_an_empty_retry_policy_is_stored_as_given(stub: Stub) -> None:
    run = stub.CreateRun(
        pb.CreateRunRequest(assistant_id="agent", retry_policy=run_pb2.RetryPolicy())
    )
    assert run.HasField("retry_policy")
    assert run.retry_policy == run_pb2.RetryPolicy()
    assert stub.GetRun(pb.GetRunRequest(run_id=run.run_id)) == run


def test_complete_stores_the_result(stub: Stub) -> None:
    assistant = f"assistant-{uuid.uuid4()}"
    created = stub.CreateRun(pb.CreateRunRequest(assistant_id=assistant))
    claimed = stub.ClaimRun(pb.ClaimRunRequest(worker_id="w1", assistant_ids=[assistant])).run
    result = {"reply": "done", "tokens": 42.0, "parts": [{"text": "a"}]}
    completed = stub.CompleteRun(
        pb.CompleteRunRequest(
            run_id=claimed.run_id,
            worker_id="w1",
            status=run_pb2.RUN_STATUS_SUCCESS,
            result=struct(**result),
            retryable=True,
        )
    )
    assert json_format.MessageToDict(completed.result) == result
    assert completed.status == run_pb2.RUN_STATUS_SUCCESS
    assert stub.GetRun(pb.GetRunRequest(run_id=created.run_id)) == completed
    assert thread_runs(stub, created.thread_id) == [completed]
    assert replayed(stub, created, completed.revision)[-1] == completed


def test_an_oversized_result_is_refused_and_the_run_keeps_running(stub: Stub) -> None:
    assistant = f"assistant-{uuid.uuid4()}"
    stub.CreateRun(pb.CreateRunRequest(assistant_id=assistant))
    claimed = stub.ClaimRun(pb.ClaimRunRequest(worker_id="w1", assistant_ids=[assistant])).run
    found = refused(
        lambda: stub.CompleteRun(
            pb.CompleteRunRequest(
                run_id=claimed.run_id,
                worker_id="w1",
                status=run_pb2.RUN_STATUS_SUCCESS,
                result=struct(blob="x" * (256 * 1024)),
            )
        )
    )
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "result" in found.violations
    assert stub.GetRun(pb.GetRunRequest(run_id=claimed.run_id)) == claimed


def _policy(**fields: Any) -> run_pb2.RetryPolicy:
    return run_pb2.RetryPolicy(**fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"namespace": "Team"}, "namespace"),
        ({"namespace": "-team"}, "namespace"),
        ({"namespace": "team-"}, "namespace"),
        ({"namespace": "team_a"}, "namespace"),
        ({"namespace": "a" * 64}, "namespace"),
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"retry_policy": _policy(max_attempts=-1)}, "retry_policy.max_attempts"),
        ({"retry_policy": _policy(backoff_coefficient=0.5)}, "retry_policy.backoff_coefficient"),
        (
            {"retry_policy": _policy(backoff_coefficient=float("inf"))},
            "retry_policy.backoff_coefficient",
        ),
        (
            {"retry_policy": _policy(backoff_coefficient=float("nan"))},
            "retry_policy.backoff_coefficient",
        ),
        ({"retry_policy": _policy(initial_backoff=seconds(0))}, "retry_policy.initial_backoff"),
        (
            {"retry_policy": _policy(initial_backoff=duration_pb2.Duration(seconds=-1))},
            "retry_policy.initial_backoff",
        ),
        (
            {"retry_policy": _policy(maximum_backoff=duration_pb2.Duration(seconds=10**12))},
            "retry_policy.maximum_backoff",
        ),
        (
            {"retry_policy": _policy(initial_backoff=seconds(10), maximum_backoff=seconds(5))},
            "retry_policy.maximum_backoff",
        ),
    ],
)
def test_bad_new_fields_are_refused_with_field_violations_and_write_nothing(
    stub: Stub, fields: dict[str, Any], field: str
) -> None:
    thread_id = str(uuid.uuid4())
    found = refused(
        lambda: stub.CreateRun(
            pb.CreateRunRequest(assistant_id="agent", thread_id=thread_id, **fields)
        )
    )
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(found.violations) == {field}, found.violations
    assert thread_runs(stub, thread_id) == []


def test_a_namespace_of_63_characters_is_a_dns_label(stub: Stub) -> None:
    name = "a" + "-" * 61 + "z"
    assert stub.CreateRun(pb.CreateRunRequest(assistant_id="agent", namespace=name)).namespace == (
        name
    )


def test_filter_and_claim_namespaces_are_validated(stub: Stub) -> None:
    bad = pb.RunFilter(namespace="Not_A_Label")
    calls: dict[str, Callable[[], object]] = {
        "filter.namespace": lambda: stub.ListRuns(pb.ListRunsRequest(filter=bad)),
        "namespace": lambda: stub.ClaimRun(pb.ClaimRunRequest(worker_id="w", namespace="No")),
    }
    for field, call in calls.items():
        found = refused(call)
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(found.violations) == {field}
    watch = stub.WatchRuns(pb.WatchRunsRequest(filter=bad), timeout=10)
    found = refused(lambda: next(iter(watch)))
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(found.violations) == {"filter.namespace"}
