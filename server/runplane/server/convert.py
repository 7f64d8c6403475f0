"""The one conversion between domain values and runplane.v1 messages."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from runplane.server import records
from runplane.server.records import JSONObject
from runplane.server.stats import Stats
from runplane.v1 import run_pb2, run_service_pb2

STATUS_TO_PROTO: dict[records.RunStatus, run_pb2.RunStatus.ValueType] = {
    records.RunStatus.PENDING: run_pb2.RUN_STATUS_PENDING,
    records.RunStatus.RUNNING: run_pb2.RUN_STATUS_RUNNING,
    records.RunStatus.ERROR: run_pb2.RUN_STATUS_ERROR,
    records.RunStatus.SUCCESS: run_pb2.RUN_STATUS_SUCCESS,
    records.RunStatus.TIMEOUT: run_pb2.RUN_STATUS_TIMEOUT,
    records.RunStatus.INTERRUPTED: run_pb2.RUN_STATUS_INTERRUPTED,
}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}

STRATEGY_TO_PROTO: dict[records.MultitaskStrategy, run_pb2.MultitaskStrategy.ValueType] = {
    records.MultitaskStrategy.REJECT: run_pb2.MULTITASK_STRATEGY_REJECT,
    records.MultitaskStrategy.INTERRUPT: run_pb2.MULTITASK_STRATEGY_INTERRUPT,
    records.MultitaskStrategy.ROLLBACK: run_pb2.MULTITASK_STRATEGY_ROLLBACK,
    records.MultitaskStrategy.ENQUEUE: run_pb2.MULTITASK_STRATEGY_ENQUEUE,
}
STRATEGY_FROM_PROTO = {value: key for key, value in STRATEGY_TO_PROTO.items()}

CANCEL_ACTION_FROM_PROTO: dict[run_pb2.CancelAction.ValueType, records.CancelAction] = {
    run_pb2.CANCEL_ACTION_UNSPECIFIED: records.CancelAction.INTERRUPT,
    run_pb2.CANCEL_ACTION_INTERRUPT: records.CancelAction.INTERRUPT,
    run_pb2.CANCEL_ACTION_ROLLBACK: records.CancelAction.ROLLBACK,
}

EVENT_TYPE_TO_PROTO: dict[records.EventType, run_pb2.EventType.ValueType] = {
    records.EventType.INITIAL: run_pb2.EVENT_TYPE_INITIAL,
    records.EventType.CREATED: run_pb2.EVENT_TYPE_CREATED,
    records.EventType.UPDATED: run_pb2.EVENT_TYPE_UPDATED,
    records.EventType.DELETED: run_pb2.EVENT_TYPE_DELETED,
}

_US_PER_S = 1_000_000


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    seconds, micros = divmod(us, _US_PER_S)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def timestamp_us(value: timestamp_pb2.Timestamp) -> int:
    return value.seconds * _US_PER_S + value.nanos // 1000


def duration(us: int) -> duration_pb2.Duration:
    seconds, micros = divmod(us, _US_PER_S)
    return duration_pb2.Duration(seconds=seconds, nanos=micros * 1000)


def duration_us(value: duration_pb2.Duration) -> int:
    return value.seconds * _US_PER_S + value.nanos // 1000


def struct(document: JSONObject) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(document)
    return message


def document(message: struct_pb2.Struct, max_depth: int) -> JSONObject:
    """The Struct as JSON (as `json_format.MessageToDict` makes it, in a third of the
    time), or ValueError saying why it has no stored form: NaN or infinity (JSON has
    neither), more than `max_depth` levels of nesting (the Struct and each Struct or
    list in it count one), or a NUL character in a key or string (PostgreSQL refuses
    them in JSON)."""
    return _object(message, 1, max_depth)


def _too_deep(max_depth: int) -> ValueError:
    return ValueError(
        f"is nested more than {max_depth} levels deep (the Struct itself and each Struct "
        "or list in it count one); not every client could decode it"
    )


def _object(message: struct_pb2.Struct, depth: int, max_depth: int) -> JSONObject:
    if depth > max_depth:
        raise _too_deep(max_depth)
    found = {}
    for key, value in message.fields.items():
        if "\0" in key:
            raise ValueError("has a key with a NUL character, which no string may contain")
        found[key] = _value(value, depth, max_depth)
    return found


def _value(value: struct_pb2.Value, depth: int, max_depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        if "\0" in value.string_value:
            raise ValueError("has a string with a NUL character, which no string may contain")
        return value.string_value
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise ValueError(f"holds {value.number_value}, which JSON has no form for")
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _object(value.struct_value, depth + 1, max_depth)
    if kind == "list_value":
        if depth >= max_depth:
            raise _too_deep(max_depth)
        return [_value(item, depth + 1, max_depth) for item in value.list_value.values]
    return None  # null_value, or no kind set


def retry_policy_to_proto(policy: records.RetryPolicy) -> run_pb2.RetryPolicy:
    message = run_pb2.RetryPolicy(
        max_attempts=policy.max_attempts, backoff_coefficient=policy.backoff_coefficient
    )
    if policy.initial_backoff is not None:
        message.initial_backoff.CopyFrom(duration(policy.initial_backoff))
    if policy.maximum_backoff is not None:
        message.maximum_backoff.CopyFrom(duration(policy.maximum_backoff))
    return message


def run_to_proto(run: records.Run) -> run_pb2.Run:
    message = run_pb2.Run(
        run_id=run.run_id,
        thread_id=run.thread_id,
        assistant_id=run.assistant_id,
        created_at=timestamp(run.created_at),
        updated_at=timestamp(run.updated_at),
        status=STATUS_TO_PROTO[run.status],
        multitask_strategy=STRATEGY_TO_PROTO[run.multitask_strategy],
        revision=run.revision,
        attempt=run.attempt,
        error=run.error,
        cancel_reason=run.cancel_reason,
        worker_id=run.worker_id,
        namespace=run.namespace,
        created_by=run.created_by,
        priority=run.priority,
    )
    if run.metadata:
        message.metadata.update(run.metadata)
    if run.kwargs:
        message.kwargs.update(run.kwargs)
    if run.started_at is not None:
        message.started_at.CopyFrom(timestamp(run.started_at))
    if run.ended_at is not None:
        message.ended_at.CopyFrom(timestamp(run.ended_at))
    if run.lease_expires_at is not None:
        message.lease_expires_at.CopyFrom(timestamp(run.lease_expires_at))
    if run.timeout is not None:
        message.timeout.CopyFrom(duration(run.timeout))
    if run.start_after is not None:
        message.start_after.CopyFrom(timestamp(run.start_after))
    if run.trace_context:
        message.trace_context.update(run.trace_context)
    if run.result:
        message.result.update(run.result)
    if run.retry_policy is not None:
        message.retry_policy.CopyFrom(retry_policy_to_proto(run.retry_policy))
    return message


def event_to_proto(event: records.RunEvent) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        type=EVENT_TYPE_TO_PROTO[event.type],
        revision=event.revision,
        run=run_to_proto(event.run),
    )


def stats_to_proto(stats: Stats) -> run_service_pb2.GetStatsResponse:
    return run_service_pb2.GetStatsResponse(
        queues=[
            run_service_pb2.QueueStats(
                namespace=queue.namespace,
                assistant_id=queue.assistant_id,
                depth=queue.depth,
                oldest_age=duration(max(0, stats.read_at - queue.oldest_due)),
            )
            for queue in stats.queues
        ],
        runs=[
            run_service_pb2.RunCount(
                namespace=count.namespace,
                status=STATUS_TO_PROTO[count.status],
                count=count.count,
            )
            for count in stats.runs
        ],
        open_watches=stats.open_watches,
        revision=stats.revision,
        compact_revision=stats.compact_revision,
    )
