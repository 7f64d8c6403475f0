"""A client watch that drops part-way through a WatchRuns initial state starts over."""

from __future__ import annotations

from runplane.client._retry import DEFAULT_RETRY
from runplane.client._watching import WatchCall
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
