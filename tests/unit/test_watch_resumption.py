"""How a client watch reads its stream: a WatchRuns initial state that drops part-way
starts over, and `wait_run` turns only the run's terminal state into a `Run`."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from runplane.client import RunDeleted, RunStatus
from runplane.client._retry import DEFAULT_RETRY
from runplane.client._watching import WatchCall, finished_run
from runplane.v1 import run_pb2, run_service_pb2

RUN_ID = "123e4567-e89b-42d3-a456-426614174000"


def _initial(revision: int) -> run_service_pb2.WatchRunsResponse:
    event = run_pb2.RunEvent(
        type=run_pb2.EVENT_TYPE_INITIAL,
        revision=revision,
        run=run_pb2.Run(
            run_id=RUN_ID,
            status=run_pb2.RUN_STATUS_PENDING,
            multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        ),
    )
    return run_service_pb2.WatchRunsResponse(events=[event], revision=revision)


def test_a_partial_initial_state_is_asked_for_again() -> None:
    asked = run_service_pb2.WatchRunsRequest(include_initial=True)
    resumption = WatchCall("WatchRuns", asked, deadline=None).start(DEFAULT_RETRY)
    assert len(resumption.receive(_initial(7))) == 1
    assert resumption.request() == asked  # dropped here: the state again, from the start
    resumption.receive(run_service_pb2.WatchRunsResponse(revision=7))  # the bookmark at R
    assert resumption.request() == run_service_pb2.WatchRunsRequest(start_revision=8)


def test_a_watch_of_one_run_resumes_after_its_initial_state() -> None:
    asked = run_service_pb2.WatchRunRequest(run_id=RUN_ID)
    resumption = WatchCall("WatchRun", asked, deadline=None).start(DEFAULT_RETRY)
    resumption.receive(_initial(7))
    assert resumption.request() == run_service_pb2.WatchRunRequest(run_id=RUN_ID, start_revision=8)


def _event(event_type: int, status: int) -> run_pb2.RunEvent:
    result = struct_pb2.Struct()
    result.update({"answer": 42})
    run = run_pb2.Run(
        run_id=RUN_ID,
        status=status,  # type: ignore[arg-type]
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        result=result,
    )
    return run_pb2.RunEvent(type=event_type, revision=9, run=run)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [run_pb2.RUN_STATUS_PENDING, run_pb2.RUN_STATUS_RUNNING])
def test_wait_run_goes_on_past_an_inflight_state(status: int) -> None:
    assert finished_run(_event(run_pb2.EVENT_TYPE_UPDATED, status)) is None


def test_wait_run_returns_the_terminal_state_as_a_run() -> None:
    run = finished_run(_event(run_pb2.EVENT_TYPE_UPDATED, run_pb2.RUN_STATUS_SUCCESS))
    assert run is not None
    assert (run.run_id, run.status, run.result) == (RUN_ID, RunStatus.SUCCESS, {"answer": 42})


def test_wait_run_raises_for_a_run_deleted_before_it_ended() -> None:
    with pytest.raises(RunDeleted, match=f"run {RUN_ID} was deleted while pending"):
        finished_run(_event(run_pb2.EVENT_TYPE_DELETED, run_pb2.RUN_STATUS_PENDING))
