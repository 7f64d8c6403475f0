"""The client's plain values and their one conversion to and from protobuf."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import duration_pb2, struct_pb2

from runplane.client import CancelAction, EventType, MultitaskStrategy, RunStatus
from runplane.client._convert import (
    cancel_action_to_proto,
    duration_from_proto,
    duration_to_proto,
    enum_from_proto,
    multitask_strategy_to_proto,
    run_event_from_proto,
    run_from_proto,
    run_page_from_proto,
    run_status_to_proto,
    struct_from_proto,
    struct_to_proto,
    timestamp_from_proto,
    timestamp_to_proto,
)
from runplane.v1 import run_pb2, run_service_pb2

CREATED = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


def proto_run(**fields: object) -> run_pb2.Run:
    run = run_pb2.Run(
        run_id="0b6f3c52-3cf4-4d5c-9d56-3c2f8e1f0a11",
        thread_id="5d0c7a1e-8f2b-4b8e-9a4c-1e2f3a4b5c6d",
        assistant_id="agent",
        status=run_pb2.RUN_STATUS_RUNNING,
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_REJECT,
        revision=42,
        attempt=2,
        error="",
        cancel_reason="",
        worker_id="worker-1",
    )
    run.created_at.FromDatetime(CREATED)
    run.updated_at.FromDatetime(CREATED + timedelta(seconds=1))
    run.started_at.FromDatetime(CREATED + timedelta(seconds=2))
    run.lease_expires_at.FromDatetime(CREATED + timedelta(seconds=32))
    run.timeout.FromTimedelta(timedelta(seconds=90))
    run.metadata.update({"team": "search", "n": 1})
    run.kwargs.update({"input": {"messages": [{"role": "user", "text": "hi"}]}, "k": 2.5})
    for name, value in fields.items():
        setattr(run, name, value)
    return run


def test_run_from_proto_gives_plain_values_with_every_field() -> None:
    run = run_from_proto(proto_run())

    assert run.run_id == "0b6f3c52-3cf4-4d5c-9d56-3c2f8e1f0a11"
    assert run.thread_id == "5d0c7a1e-8f2b-4b8e-9a4c-1e2f3a4b5c6d"
    assert run.assistant_id == "agent"
    assert run.status is RunStatus.RUNNING
    assert run.multitask_strategy is MultitaskStrategy.REJECT
    assert (run.revision, run.attempt, run.worker_id) == (42, 2, "worker-1")
    assert run.created_at == CREATED
    assert run.created_at.tzinfo is UTC
    assert run.updated_at == CREATED + timedelta(seconds=1)
    assert run.started_at == CREATED + timedelta(seconds=2)
    assert run.lease_expires_at == CREATED + timedelta(seconds=32)
    assert run.timeout == timedelta(seconds=90)
    assert run.metadata == {"team": "search", "n": 1}
    assert run.kwargs == {"input": {"messages": [{"role": "user", "text": "hi"}]}, "k": 2.5}


def test_unset_optional_fields_become_none() -> None:
    message = proto_run()
    for name in ("started_at", "lease_expires_at", "timeout"):
        message.ClearField(name)

    run = run_from_proto(message)

    assert run.started_at is None
    assert run.ended_at is None
    assert run.lease_expires_at is None
    assert run.start_after is None
    assert run.timeout is None


def test_struct_integral_numbers_come_back_as_int() -> None:
    value = {"n": 1, "big": 2**40, "ratio": 0.5, "flag": True, "none": None, "xs": [1, 2.0, 3.5]}

    back = struct_from_proto(struct_to_proto(value))

    assert back == {
        "n": 1,
        "big": 2**40,
        "ratio": 0.5,
        "flag": True,
        "none": None,
        "xs": [1, 2, 3.5],
    }
    assert type(back["n"]) is int
    assert type(back["xs"][1]) is int
    assert back["flag"] is True


def test_empty_struct_is_an_empty_dict() -> None:
    assert struct_from_proto(struct_pb2.Struct()) == {}


def test_timestamp_round_trip_keeps_microseconds_and_normalizes_to_utc() -> None:
    paris = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=paris)

    back = timestamp_from_proto(timestamp_to_proto(local))

    assert back == local
    assert back.tzinfo is UTC
    assert back.hour == 12


def test_naive_datetimes_are_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        timestamp_to_proto(datetime(2025, 1, 1))


@pytest.mark.parametrize("value", [timedelta(minutes=1, milliseconds=5), 60.005])
def test_durations_accept_timedelta_or_seconds(value: timedelta | float) -> None:
    message = duration_to_proto(value)

    assert message == duration_pb2.Duration(seconds=60, nanos=5_000_000)
    assert duration_from_proto(message) == timedelta(seconds=60, milliseconds=5)


@pytest.mark.parametrize("word", ["pending", "PENDING", "Pending", RunStatus.PENDING])
def test_statuses_accept_enums_or_any_case_strings(word: str) -> None:
    assert RunStatus(word) is RunStatus.PENDING
    assert run_status_to_proto(word) == run_pb2.RUN_STATUS_PENDING


def test_bad_enum_string_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="reject, interrupt, rollback, enqueue") as caught:
        multitask_strategy_to_proto("queue")

    assert "'queue' is not a valid MultitaskStrategy" in str(caught.value)


def test_every_client_enum_maps_to_its_proto_enum_and_back() -> None:
    for status in RunStatus:
        name = run_pb2.RunStatus.Name(run_status_to_proto(status))
        assert enum_from_proto(RunStatus, name) is status
    for strategy in MultitaskStrategy:
        name = run_pb2.MultitaskStrategy.Name(multitask_strategy_to_proto(strategy))
        assert enum_from_proto(MultitaskStrategy, name) is strategy
    for action in CancelAction:
        name = run_pb2.CancelAction.Name(cancel_action_to_proto(action))
        assert enum_from_proto(CancelAction, name) is action
    for event_type in EventType:
        assert enum_from_proto(EventType, f"EVENT_TYPE_{event_type.name}") is event_type


def test_unspecified_status_from_the_wire_is_an_error() -> None:
    with pytest.raises(ValueError, match="RUN_STATUS_UNSPECIFIED has no RunStatus"):
        run_from_proto(proto_run(status=run_pb2.RUN_STATUS_UNSPECIFIED))


def test_terminal_statuses() -> None:
    inflight = {status for status in RunStatus if not status.is_terminal}

    assert inflight == {RunStatus.PENDING, RunStatus.RUNNING}


def test_status_strings_are_the_seed_words() -> None:
    assert [status.value for status in RunStatus] == [
        "pending",
        "running",
        "error",
        "success",
        "timeout",
        "interrupted",
    ]
    assert isinstance(RunStatus.SUCCESS, str)


def test_run_event_and_page_conversions() -> None:
    event = run_event_from_proto(
        run_pb2.RunEvent(type=run_pb2.EVENT_TYPE_DELETED, revision=43, run=proto_run())
    )
    page = run_page_from_proto(
        run_service_pb2.ListRunsResponse(
            runs=[proto_run(), proto_run(revision=7)], next_page_token="t", revision=50
        )
    )

    assert event.type is EventType.DELETED
    assert event.revision == 43
    assert event.run.status is RunStatus.RUNNING
    assert [run.revision for run in page.runs] == [42, 7]
    assert (page.next_page_token, page.revision) == ("t", 50)
