"""The one conversion between protobuf messages and the client's plain values.

Enums map by name: `RunStatus.PENDING` <-> `RUN_STATUS_PENDING`, so the proto
and the Python enums cannot drift apart silently (a missing name fails loudly).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from runplane.client._models import (
    CancelAction,
    CancelledRuns,
    EventType,
    MultitaskStrategy,
    QueueStats,
    Run,
    RunCount,
    RunEvent,
    RunPage,
    RunRetryPolicy,
    RunStatus,
    Stats,
    _WordEnum,
)
from runplane.v1 import run_pb2, run_service_pb2

_E = TypeVar("_E", bound=_WordEnum)

# Name prefix of each proto enum mirrored by a client enum.
_PROTO_PREFIXES: dict[type[_WordEnum], str] = {
    RunStatus: "RUN_STATUS_",
    MultitaskStrategy: "MULTITASK_STRATEGY_",
    CancelAction: "CANCEL_ACTION_",
    EventType: "EVENT_TYPE_",
}


def _proto_name(enum_type: type[_WordEnum], value: _WordEnum | str) -> str:
    return _PROTO_PREFIXES[enum_type] + enum_type(value).name


def run_status_to_proto(value: RunStatus | str) -> run_pb2.RunStatus.ValueType:
    return run_pb2.RunStatus.Value(_proto_name(RunStatus, value))


def multitask_strategy_to_proto(
    value: MultitaskStrategy | str,
) -> run_pb2.MultitaskStrategy.ValueType:
    return run_pb2.MultitaskStrategy.Value(_proto_name(MultitaskStrategy, value))


def cancel_action_to_proto(value: CancelAction | str) -> run_pb2.CancelAction.ValueType:
    return run_pb2.CancelAction.Value(_proto_name(CancelAction, value))


def enum_from_proto(enum_type: type[_E], proto_name: str) -> _E:
    """The member for a proto enum name; ValueError for UNSPECIFIED or a name unknown here.

    Takes the name (`run_pb2.RunStatus.Name(number)`) because proto numbers are
    only meaningful with their enum.
    """
    try:
        return enum_type[proto_name.removeprefix(_PROTO_PREFIXES[enum_type])]
    except KeyError:
        raise ValueError(f"{proto_name} has no {enum_type.__name__}") from None


def timestamp_to_proto(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp for an aware datetime; naive ones are refused rather than guessed."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime {value.isoformat()} must be timezone-aware")
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def timestamp_from_proto(message: timestamp_pb2.Timestamp) -> datetime:
    return message.ToDatetime(tzinfo=UTC)


def duration_to_proto(value: timedelta | float) -> duration_pb2.Duration:
    """A Duration for a timedelta or a number of seconds."""
    if not isinstance(value, timedelta):
        value = timedelta(seconds=value)
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def duration_from_proto(message: duration_pb2.Duration) -> timedelta:
    return message.ToTimedelta()


def struct_to_proto(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def struct_from_proto(message: struct_pb2.Struct) -> dict[str, Any]:
    """A plain dict; Struct numbers are doubles, so integral ones become ints again."""
    value: dict[str, Any] = _integral_floats_to_int(json_format.MessageToDict(message))
    return value


def _integral_floats_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_to_int(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(item) for item in value]
    return value


def run_from_proto(message: run_pb2.Run) -> Run:
    return Run(
        run_id=message.run_id,
        namespace=message.namespace,
        thread_id=message.thread_id,
        assistant_id=message.assistant_id,
        created_at=timestamp_from_proto(message.created_at),
        created_by=message.created_by,
        updated_at=timestamp_from_proto(message.updated_at),
        status=enum_from_proto(RunStatus, run_pb2.RunStatus.Name(message.status)),
        metadata=struct_from_proto(message.metadata),
        kwargs=struct_from_proto(message.kwargs),
        multitask_strategy=enum_from_proto(
            MultitaskStrategy, run_pb2.MultitaskStrategy.Name(message.multitask_strategy)
        ),
        revision=message.revision,
        attempt=message.attempt,
        started_at=_optional_timestamp(message, "started_at"),
        ended_at=_optional_timestamp(message, "ended_at"),
        lease_expires_at=_optional_timestamp(message, "lease_expires_at"),
        start_after=_optional_timestamp(message, "start_after"),
        error=message.error,
        cancel_reason=message.cancel_reason,
        worker_id=message.worker_id,
        timeout=duration_from_proto(message.timeout) if message.HasField("timeout") else None,
        trace_context=dict(message.trace_context),
        priority=message.priority,
        retry_policy=(
            retry_policy_from_proto(message.retry_policy)
            if message.HasField("retry_policy")
            else None
        ),
        result=struct_from_proto(message.result),
    )


def retry_policy_to_proto(policy: RunRetryPolicy) -> run_pb2.RetryPolicy:
    message = run_pb2.RetryPolicy(
        max_attempts=policy.max_attempts, backoff_coefficient=policy.backoff_coefficient
    )
    if policy.initial_backoff is not None:
        message.initial_backoff.CopyFrom(duration_to_proto(policy.initial_backoff))
    if policy.maximum_backoff is not None:
        message.maximum_backoff.CopyFrom(duration_to_proto(policy.maximum_backoff))
    return message


def retry_policy_from_proto(message: run_pb2.RetryPolicy) -> RunRetryPolicy:
    return RunRetryPolicy(
        max_attempts=message.max_attempts,
        initial_backoff=(
            duration_from_proto(message.initial_backoff)
            if message.HasField("initial_backoff")
            else None
        ),
        backoff_coefficient=message.backoff_coefficient,
        maximum_backoff=(
            duration_from_proto(message.maximum_backoff)
            if message.HasField("maximum_backoff")
            else None
        ),
    )


def _optional_timestamp(
    message: run_pb2.Run,
    field: Literal["started_at", "ended_at", "lease_expires_at", "start_after"],
) -> datetime | None:
    if not message.HasField(field):
        return None
    timestamp: timestamp_pb2.Timestamp = getattr(message, field)
    return timestamp_from_proto(timestamp)


def run_event_from_proto(message: run_pb2.RunEvent) -> RunEvent:
    return RunEvent(
        type=enum_from_proto(EventType, run_pb2.EventType.Name(message.type)),
        revision=message.revision,
        run=run_from_proto(message.run),
    )


def cancelled_runs_from_proto(message: run_service_pb2.CancelRunsResponse) -> CancelledRuns:
    return CancelledRuns(count=message.count, revision=message.revision)


def run_page_from_proto(message: run_service_pb2.ListRunsResponse) -> RunPage:
    return RunPage(
        runs=[run_from_proto(run) for run in message.runs],
        next_page_token=message.next_page_token,
        revision=message.revision,
    )


def stats_from_proto(message: run_service_pb2.GetStatsResponse) -> Stats:
    return Stats(
        queues=[
            QueueStats(
                namespace=queue.namespace,
                assistant_id=queue.assistant_id,
                depth=queue.depth,
                oldest_age=duration_from_proto(queue.oldest_age),
            )
            for queue in message.queues
        ],
        runs=[
            RunCount(
                namespace=count.namespace,
                status=enum_from_proto(RunStatus, run_pb2.RunStatus.Name(count.status)),
                count=count.count,
            )
            for count in message.runs
        ],
        open_watches=message.open_watches,
        revision=message.revision,
        compact_revision=message.compact_revision,
    )
