"""RunService's unary contract, through raw stubs, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.stubs import refused

Stub = run_service_pb2_grpc.RunServiceStub
PENDING, RUNNING = run_pb2.RUN_STATUS_PENDING, run_pb2.RUN_STATUS_RUNNING
REJECT = run_pb2.MULTITASK_STRATEGY_REJECT
INTERRUPT = run_pb2.MULTITASK_STRATEGY_INTERRUPT
ROLLBACK = run_pb2.MULTITASK_STRATEGY_ROLLBACK
ENQUEUE = run_pb2.MULTITASK_STRATEGY_ENQUEUE


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def create(stub: Stub, **fields: Any) -> run_pb2.Run:
    fields.setdefault("assistant_id", "agent")
    for name in ("metadata", "kwargs"):
        if isinstance(fields.get(name), dict):
            fields[name] = struct(**fields[name])
    return stub.CreateRun(run_service_pb2.CreateRunRequest(**fields))


def new_id() -> str:
    return str(uuid.uuid4())


def thread_runs(stub: Stub, thread_id: str) -> list[run_pb2.Run]:
    request = run_service_pb2.ListRunsRequest(
        filter=run_service_pb2.RunFilter(thread_id=thread_id), order_by="created_at asc"
    )
    return list(stub.ListRuns(request).runs)


# -- CreateRun -------------------------------------------------------------------------------


def test_create_returns_pending_run_with_server_generated_ids(stub: Stub) -> None:
    run = create(stub, metadata={"team": "search"}, kwargs={"input": {"q": "hi"}})
    assert str(uuid.UUID(run.run_id)) == run.run_id
    assert str(uuid.UUID(run.thread_id)) == run.thread_id
    assert run.status == PENDING
    assert run.multitask_strategy == ENQUEUE
    assert run.revision > 0
    assert run.created_at == run.updated_at
    assert dict(run.metadata) == {"team": "search"}
    assert json_format.MessageToDict(run.kwargs) == {"input": {"q": "hi"}}
    assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)) == run


def test_create_keeps_client_supplied_ids_timeout_and_start_after(stub: Stub) -> None:
    run_id, thread_id = new_id(), new_id()
    request = run_service_pb2.CreateRunRequest(
        assistant_id="agent", run_id=run_id, thread_id=thread_id
    )
    request.timeout.FromSeconds(90)
    request.start_after.FromSeconds(2_000_000_000)
    run = stub.CreateRun(request)
    assert (run.run_id, run.thread_id) == (run_id, thread_id)
    assert run.timeout.ToSeconds() == 90
    assert run.start_after.ToSeconds() == 2_000_000_000


def test_create_with_taken_run_id_is_already_exists(stub: Stub) -> None:
    first = create(stub)
    found = refused(lambda: create(stub, run_id=first.run_id))
    assert found.code == grpc.StatusCode.ALREADY_EXISTS
    assert found.metadata["run_id"] == first.run_id


def test_reject_strategy_refuses_second_run_on_busy_thread(stub: Stub) -> None:
    first = create(stub, multitask_strategy=REJECT)
    found = refused(lambda: create(stub, thread_id=first.thread_id, multitask_strategy=REJECT))
    assert found.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (found.reason, found.domain) == ("THREAD_BUSY", "runplane.dev")
    assert found.metadata == {"thread_id": first.thread_id, "run_id": first.run_id}
    assert [run.run_id for run in thread_runs(stub, first.thread_id)] == [first.run_id]


def test_reject_strategy_accepts_run_once_thread_is_idle(stub: Stub) -> None:
    first = create(stub)
    stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=first.run_id))
    second = create(stub, thread_id=first.thread_id, multitask_strategy=REJECT)
    assert second.status == PENDING


def test_interrupt_strategy_interrupts_every_inflight_run(stub: Stub) -> None:
    first = create(stub)
    second = create(stub, thread_id=first.thread_id)
    third = create(stub, thread_id=first.thread_id, multitask_strategy=INTERRUPT)
    runs = {run.run_id: run for run in thread_runs(stub, first.thread_id)}
    for old in (first, second):
        assert runs[old.run_id].status == run_pb2.RUN_STATUS_INTERRUPTED
        assert runs[old.run_id].cancel_reason == f"superseded by run {third.run_id}"
        assert runs[old.run_id].HasField("ended_at")
        assert runs[old.run_id].revision < third.revision
    assert runs[third.run_id].status == PENDING


def test_rollback_strategy_deletes_every_inflight_run(stub: Stub) -> None:
    first = create(stub)
    second = create(stub, thread_id=first.thread_id)
    third = create(stub, thread_id=first.thread_id, multitask_strategy=ROLLBACK)
    assert [run.run_id for run in thread_runs(stub, first.thread_id)] == [third.run_id]
    for gone in (first, second):
        found = refused(
            lambda run_id=gone.run_id: stub.GetRun(  # type: ignore[misc]
                run_service_pb2.GetRunRequest(run_id=run_id)
            )
        )
        assert found.code == grpc.StatusCode.NOT_FOUND


def test_strategies_leave_terminal_runs_alone(stub: Stub) -> None:
    first = create(stub)
    stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=first.run_id, reason="user"))
    create(stub, thread_id=first.thread_id, multitask_strategy=ROLLBACK)
    kept = stub.GetRun(run_service_pb2.GetRunRequest(run_id=first.run_id))
    assert (kept.status, kept.cancel_reason) == (run_pb2.RUN_STATUS_INTERRUPTED, "user")


def test_enqueue_strategy_keeps_every_run_pending_in_creation_order(stub: Stub) -> None:
    first = create(stub)
    later = [create(stub, thread_id=first.thread_id, multitask_strategy=ENQUEUE) for _ in range(3)]
    runs = thread_runs(stub, first.thread_id)
    assert [run.run_id for run in runs] == [first.run_id] + [run.run_id for run in later]
    assert {run.status for run in runs} == {PENDING}


def test_request_id_makes_create_idempotent(stub: Stub) -> None:
    key = f"retry-{new_id()}"
    first = create(stub, request_id=key, metadata={"attempt": 1})
    again = create(stub, request_id=key, thread_id=first.thread_id, multitask_strategy=INTERRUPT)
    assert again == first
    assert [run.run_id for run in thread_runs(stub, first.thread_id)] == [first.run_id]
    assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=first.run_id)).status == PENDING


# -- GetRun / ListRuns -----------------------------------------------------------------------


def test_get_unknown_run_is_not_found(stub: Stub) -> None:
    missing = new_id()
    found = refused(lambda: stub.GetRun(run_service_pb2.GetRunRequest(run_id=missing)))
    assert found.code == grpc.StatusCode.NOT_FOUND
    assert (found.reason, found.metadata) == ("RUN_NOT_FOUND", {"run_id": missing})


def test_list_pages_follow_tokens_in_both_orders_without_overlap(stub: Stub) -> None:
    thread_id = new_id()
    created = [create(stub, thread_id=thread_id).run_id for _ in range(7)]
    for order, expected in (("created_at asc", created), ("created_at desc", created[::-1])):
        seen: list[str] = []
        token = ""
        while True:
            page = stub.ListRuns(
                run_service_pb2.ListRunsRequest(
                    filter=run_service_pb2.RunFilter(thread_id=thread_id),
                    page_size=3,
                    page_token=token,
                    order_by=order,
                )
            )
            assert len(page.runs) <= 3
            assert page.revision >= max(run.revision for run in page.runs)
            seen += [run.run_id for run in page.runs]
            token = page.next_page_token
            if not token:
                break
        assert seen == expected


def test_list_pages_are_stable_under_concurrent_inserts(stub: Stub) -> None:
    thread_id = new_id()
    created = [create(stub, thread_id=thread_id).run_id for _ in range(4)]
    request = run_service_pb2.ListRunsRequest(
        filter=run_service_pb2.RunFilter(thread_id=thread_id), page_size=2
    )
    first = stub.ListRuns(request)
    newer = create(stub, thread_id=thread_id).run_id  # lands before page 1 in desc order
    request.page_token = first.next_page_token
    second = stub.ListRuns(request)
    assert [r.run_id for r in first.runs] + [r.run_id for r in second.runs] == created[::-1]
    assert newer not in [r.run_id for r in second.runs]


def test_list_filters_by_assistant_status_and_metadata_containment(stub: Stub) -> None:
    thread_id, assistant = new_id(), f"assistant-{new_id()}"
    match = create(
        stub,
        thread_id=thread_id,
        assistant_id=assistant,
        metadata={"env": "prod", "tier": 2, "tags": ["a", "b"], "owner": {"team": "x"}},
    )
    create(stub, thread_id=thread_id, assistant_id=assistant, metadata={"env": "dev"})
    other = create(stub, thread_id=thread_id, assistant_id="other", metadata={"env": "prod"})
    stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=other.run_id))

    def ids(**filter_fields: Any) -> set[str]:
        if "metadata" in filter_fields:
            filter_fields["metadata"] = struct(**filter_fields["metadata"])
        run_filter = run_service_pb2.RunFilter(thread_id=thread_id, **filter_fields)
        return {
            r.run_id for r in stub.ListRuns(run_service_pb2.ListRunsRequest(filter=run_filter)).runs
        }

    contained = {"env": "prod", "tier": 2, "tags": ["a", "b"], "owner": {"team": "x"}}
    assert ids(metadata=contained) == {match.run_id}
    assert ids(metadata={"env": "prod"}, assistant_id=assistant) == {match.run_id}
    assert ids(metadata={"tier": "2"}) == set()
    assert ids(metadata={"tags": ["a"]}) == set()
    assert ids(metadata={"missing": None}) == set()
    assert ids(statuses=[run_pb2.RUN_STATUS_INTERRUPTED]) == {other.run_id}
    assert len(ids(statuses=[PENDING, run_pb2.RUN_STATUS_INTERRUPTED])) == 3


def test_page_token_is_bound_to_its_filter_and_order(stub: Stub) -> None:
    thread_id = new_id()
    for _ in range(3):
        create(stub, thread_id=thread_id)
    run_filter = run_service_pb2.RunFilter(thread_id=thread_id)
    token = stub.ListRuns(
        run_service_pb2.ListRunsRequest(filter=run_filter, page_size=1)
    ).next_page_token
    assert token
    for request in (
        run_service_pb2.ListRunsRequest(page_size=1, page_token=token),
        run_service_pb2.ListRunsRequest(
            filter=run_filter, page_size=1, page_token=token, order_by="created_at asc"
        ),
        run_service_pb2.ListRunsRequest(filter=run_filter, page_token="not-a-token"),
    ):
        found = refused(lambda request=request: stub.ListRuns(request))  # type: ignore[misc]
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in found.violations


def test_page_size_defaults_to_50_and_is_capped_at_1000(stub: Stub) -> None:
    thread_id = new_id()
    for _ in range(51):
        create(stub, thread_id=thread_id)
    run_filter = run_service_pb2.RunFilter(thread_id=thread_id)
    assert len(stub.ListRuns(run_service_pb2.ListRunsRequest(filter=run_filter)).runs) == 50
    capped = stub.ListRuns(run_service_pb2.ListRunsRequest(filter=run_filter, page_size=5000))
    assert (len(capped.runs), capped.next_page_token) == (51, "")


# -- UpdateRun / CancelRun / DeleteRun -------------------------------------------------------


def update(
    stub: Stub, run_id: str, paths: list[str], expected: int = 0, **fields: Any
) -> run_pb2.Run:
    run = run_pb2.Run(run_id=run_id)
    for name, values in fields.items():
        getattr(run, name).update(values)
    return stub.UpdateRun(
        run_service_pb2.UpdateRunRequest(
            run=run,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            expected_revision=expected,
        )
    )


def test_update_changes_only_masked_fields_and_bumps_revision(stub: Stub) -> None:
    run = create(stub, metadata={"a": 1}, kwargs={"input": "x"})
    updated = update(stub, run.run_id, ["metadata"], metadata={"b": 2}, kwargs={"input": "y"})
    assert dict(updated.metadata) == {"b": 2}
    assert dict(updated.kwargs) == {"input": "x"}
    assert updated.revision > run.revision
    assert updated.status == PENDING
    both = update(stub, run.run_id, ["kwargs", "metadata"], kwargs={"input": "z"}, metadata={})
    assert (dict(both.kwargs), dict(both.metadata)) == ({"input": "z"}, {})


def test_update_with_stale_expected_revision_is_aborted(stub: Stub) -> None:
    run = create(stub)
    update(stub, run.run_id, ["metadata"], expected=run.revision, metadata={"v": 1})
    found = refused(
        lambda: update(stub, run.run_id, ["metadata"], expected=run.revision, metadata={"v": 2})
    )
    assert found.code == grpc.StatusCode.ABORTED
    assert found.reason == "REVISION_MISMATCH"
    assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)).metadata["v"] == 1


def test_update_rejects_read_only_unknown_and_missing_mask_paths(stub: Stub) -> None:
    run = create(stub)
    for paths in (["status"], ["no_such_field"], [], ["metadata", "revision"]):
        found = refused(lambda paths=paths: update(stub, run.run_id, paths))  # type: ignore[misc]
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "update_mask" in found.violations
    assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)).revision == run.revision


def test_update_kwargs_only_while_pending(stub: Stub) -> None:
    run = create(stub)
    stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.run_id))
    found = refused(lambda: update(stub, run.run_id, ["kwargs"], kwargs={"input": 1}))
    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_NOT_PENDING")
    assert update(stub, run.run_id, ["metadata"], metadata={"note": "ok"}).metadata["note"] == "ok"


def test_cancel_interrupts_with_reason_and_terminal_runs_refuse(stub: Stub) -> None:
    run = create(stub)
    cancelled = stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.run_id, reason="user"))
    assert (cancelled.status, cancelled.cancel_reason) == (run_pb2.RUN_STATUS_INTERRUPTED, "user")
    assert cancelled.HasField("ended_at")
    found = refused(lambda: stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.run_id)))
    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_TERMINAL")


def test_cancel_rollback_deletes_and_returns_last_state(stub: Stub) -> None:
    run = create(stub, metadata={"k": "v"})
    last = stub.CancelRun(
        run_service_pb2.CancelRunRequest(run_id=run.run_id, action=run_pb2.CANCEL_ACTION_ROLLBACK)
    )
    assert (last.run_id, last.status, dict(last.metadata)) == (run.run_id, PENDING, {"k": "v"})
    assert last.revision > run.revision
    found = refused(lambda: stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)))
    assert found.code == grpc.StatusCode.NOT_FOUND


def test_delete_refuses_inflight_run_unless_forced(stub: Stub) -> None:
    run = create(stub)
    found = refused(lambda: stub.DeleteRun(run_service_pb2.DeleteRunRequest(run_id=run.run_id)))
    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RUN_INFLIGHT")
    stub.DeleteRun(run_service_pb2.DeleteRunRequest(run_id=run.run_id, force=True))
    found = refused(lambda: stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id)))
    assert found.code == grpc.StatusCode.NOT_FOUND


def test_delete_terminal_run_checks_expected_revision(stub: Stub) -> None:
    run = create(stub)
    cancelled = stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=run.run_id))
    stale = run_service_pb2.DeleteRunRequest(run_id=run.run_id, expected_revision=run.revision)
    assert refused(lambda: stub.DeleteRun(stale)).reason == "REVISION_MISMATCH"
    stub.DeleteRun(
        run_service_pb2.DeleteRunRequest(run_id=run.run_id, expected_revision=cancelled.revision)
    )
    assert refused(lambda: stub.DeleteRun(stale)).code == grpc.StatusCode.NOT_FOUND


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"assistant_id": ""}, "assistant_id"),
        ({"assistant_id": "a" * 257}, "assistant_id"),
        ({"thread_id": "not-a-uuid"}, "thread_id"),
        ({"thread_id": "123E4567-E89B-42D3-A456-426614174000"}, "thread_id"),
        ({"run_id": "123"}, "run_id"),
        ({"multitask_strategy": 99}, "multitask_strategy"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"metadata": {"blob": "x" * (256 * 1024)}}, "metadata"),
        ({"kwargs": {"nan": float("nan")}}, "kwargs"),
    ],
)
def test_create_rejects_bad_input_with_field_violations_and_writes_nothing(
    stub: Stub, fields: dict[str, Any], field: str
) -> None:
    thread_id = new_id()
    fields = {"thread_id": thread_id, **fields}
    found = refused(lambda: create(stub, **fields))
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in found.violations, found.violations
    assert found.violations[field]
    assert "Traceback" not in found.message
    assert thread_runs(stub, thread_id) == []


def test_every_violation_is_reported_at_once(stub: Stub) -> None:
    found = refused(lambda: create(stub, assistant_id="", thread_id="x", run_id="y"))
    assert set(found.violations) == {"assistant_id", "thread_id", "run_id"}


@pytest.mark.parametrize(
    "request_message",
    [
        run_service_pb2.ListRunsRequest(page_size=-1),
        run_service_pb2.ListRunsRequest(order_by="updated_at"),
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(statuses=[run_pb2.RunStatus.ValueType(42)])
        ),
        run_service_pb2.ListRunsRequest(filter=run_service_pb2.RunFilter(thread_id="t")),
    ],
)
def test_list_rejects_bad_input(
    stub: Stub, request_message: run_service_pb2.ListRunsRequest
) -> None:
    found = refused(lambda: stub.ListRuns(request_message))
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.violations


def test_malformed_run_ids_are_invalid_argument_everywhere(stub: Stub) -> None:
    calls: list[Callable[[], object]] = [
        lambda: stub.GetRun(run_service_pb2.GetRunRequest(run_id="nope")),
        lambda: stub.CancelRun(run_service_pb2.CancelRunRequest(run_id="nope")),
        lambda: stub.DeleteRun(run_service_pb2.DeleteRunRequest(run_id="")),
        lambda: update(stub, "nope", ["metadata"]),
    ]
    for call in calls:
        assert refused(call).code == grpc.StatusCode.INVALID_ARGUMENT
