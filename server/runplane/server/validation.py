"""Turns runplane.v1 requests into validated domain commands, or InvalidInput.

Every problem of a request is collected, so one INVALID_ARGUMENT answer lists
them all as BadRequest field violations. Nothing here touches the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from runplane.server import convert, records
from runplane.server.claims import ClaimRequest, Completion
from runplane.server.errors import FieldViolation, InvalidInput
from runplane.server.records import RunFilter, SortOrder
from runplane.server.runs import ListQuery, NewRun, RunPatch
from runplane.server.watch.streams import RunsWatch, clamp_progress_interval
from runplane.v1 import run_pb2, run_service_pb2

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_EXAMPLE = "123e4567-e89b-42d3-a456-426614174000"
MAX_ASSISTANT_ID = 256
MAX_REQUEST_ID = 128
MAX_REASON = 1024
MAX_WORKER_ID = 256
MAX_ERROR = 64 * 1024
DEFAULT_LEASE_US = 30_000_000
MAX_LEASE_US = 3600 * 1_000_000
MAX_CLAIM_WAIT_S = 60.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
_ORDERS = {
    "": SortOrder.DESC,
    "created_at desc": SortOrder.DESC,
    "created_at asc": SortOrder.ASC,
    "created_at": SortOrder.ASC,
}
_MUTABLE_PATHS = ("metadata", "kwargs")
_RUN_FIELDS = frozenset(run_pb2.Run.DESCRIPTOR.fields_by_name)


@dataclass(frozen=True, slots=True)
class Limits:
    max_struct_bytes: int = 256 * 1024


class _Violations:
    """Collects field violations; `check` raises them all at once."""

    def __init__(self) -> None:
        self._found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._found.append(FieldViolation(field, description))

    def check(self) -> None:
        if self._found:
            raise InvalidInput(self._found)

    def uuid(self, field: str, value: str, *, required: bool) -> str | None:
        if not value:
            if required:
                self.add(field, f"is required: a canonical lowercase UUID like {_UUID_EXAMPLE}")
            return None
        if not _UUID.fullmatch(value):
            self.add(
                field,
                f"must be a canonical lowercase UUID like {_UUID_EXAMPLE}, got {value[:80]!r}",
            )
            return None
        return value

    def text(self, field: str, value: str, *, limit: int, required: bool = False) -> None:
        if required and not value:
            self.add(field, f"is required (1 to {limit} characters)")
        elif len(value) > limit:
            self.add(field, f"has {len(value)} characters; at most {limit} are allowed")

    def struct(self, field: str, value: struct_pb2.Struct, limits: Limits) -> records.JSONObject:
        size = value.ByteSize()
        if size > limits.max_struct_bytes:
            self.add(
                field,
                f"is {size} bytes; the limit is {limits.max_struct_bytes} "
                "(server flag --max-struct-bytes)",
            )
            return {}
        try:
            return convert.document(value)
        except ValueError as error:  # NaN and infinity have no JSON form
            self.add(field, f"cannot be stored as JSON: {error}")
            return {}

    def revision(self, field: str, value: int) -> None:
        if value < 0:
            self.add(field, f"must be 0 (unconditional) or a revision, got {value}")


def _positive_duration_us(
    violations: _Violations, field: str, value: duration_pb2.Duration
) -> int | None:
    if value.nanos < 0 or value.nanos >= 1_000_000_000 or value.seconds < 0:
        violations.add(field, "must be a positive duration")
        return None
    us = convert.duration_us(value)
    if us <= 0:
        violations.add(field, "must be a positive duration")
        return None
    return us


def _timestamp_us(violations: _Violations, field: str, value: timestamp_pb2.Timestamp) -> int:
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 1_000_000_000):
        violations.add(field, "is outside the valid Timestamp range")
        return 0
    return convert.timestamp_us(value)


def create_run(request: run_service_pb2.CreateRunRequest, limits: Limits) -> NewRun:
    v = _Violations()
    thread_id = v.uuid("thread_id", request.thread_id, required=False)
    run_id = v.uuid("run_id", request.run_id, required=False)
    v.text("assistant_id", request.assistant_id, limit=MAX_ASSISTANT_ID, required=True)
    v.text("request_id", request.request_id, limit=MAX_REQUEST_ID)
    metadata = v.struct("metadata", request.metadata, limits)
    kwargs = v.struct("kwargs", request.kwargs, limits)
    if request.multitask_strategy == run_pb2.MULTITASK_STRATEGY_UNSPECIFIED:
        strategy = records.MultitaskStrategy.ENQUEUE
    elif request.multitask_strategy in convert.STRATEGY_FROM_PROTO:
        strategy = convert.STRATEGY_FROM_PROTO[request.multitask_strategy]
    else:
        strategy = records.MultitaskStrategy.ENQUEUE
        v.add(
            "multitask_strategy",
            f"unknown value {request.multitask_strategy}; "
            "use REJECT, INTERRUPT, ROLLBACK or ENQUEUE",
        )
    timeout = (
        _positive_duration_us(v, "timeout", request.timeout)
        if request.HasField("timeout")
        else None
    )
    start_after = (
        _timestamp_us(v, "start_after", request.start_after)
        if request.HasField("start_after")
        else None
    )
    v.check()
    return NewRun(
        assistant_id=request.assistant_id,
        thread_id=thread_id,
        run_id=run_id,
        metadata=metadata,
        kwargs=kwargs,
        strategy=strategy,
        request_id=request.request_id or None,
        timeout=timeout,
        start_after=start_after,
    )


def run_id(value: str, field: str = "run_id") -> str:
    v = _Violations()
    checked = v.uuid(field, value, required=True)
    v.check()
    assert checked is not None
    return checked


def run_filter(
    v: _Violations, message: run_service_pb2.RunFilter, limits: Limits, field: str = "filter"
) -> RunFilter:
    thread_id = v.uuid(f"{field}.thread_id", message.thread_id, required=False)
    v.text(f"{field}.assistant_id", message.assistant_id, limit=MAX_ASSISTANT_ID)
    statuses: set[records.RunStatus] = set()
    for index, status in enumerate(message.statuses):
        if status in convert.STATUS_FROM_PROTO:
            statuses.add(convert.STATUS_FROM_PROTO[status])
        else:
            v.add(f"{field}.statuses[{index}]", f"{status} is not a run status")
    metadata = v.struct(f"{field}.metadata", message.metadata, limits)
    return RunFilter(
        thread_id=thread_id,
        assistant_id=message.assistant_id or None,
        statuses=frozenset(statuses),
        metadata=metadata,
    )


def list_runs(request: run_service_pb2.ListRunsRequest, limits: Limits) -> ListQuery:
    v = _Violations()
    selected = run_filter(v, request.filter, limits)
    if request.page_size < 0:
        v.add("page_size", f"must not be negative, got {request.page_size}")
    page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    order = _ORDERS.get(" ".join(request.order_by.lower().split()))
    if order is None:
        v.add(
            "order_by", f"must be 'created_at desc' or 'created_at asc', got {request.order_by!r}"
        )
    v.check()
    assert order is not None
    return ListQuery(
        run_filter=selected, order=order, page_size=page_size, page_token=request.page_token
    )


def update_run(request: run_service_pb2.UpdateRunRequest, limits: Limits) -> RunPatch:
    v = _Violations()
    checked_id = v.uuid("run.run_id", request.run.run_id, required=True)
    v.revision("expected_revision", request.expected_revision)
    paths = list(request.update_mask.paths)
    if paths == ["*"]:
        paths = list(_MUTABLE_PATHS)
    if not paths:
        v.add("update_mask", "must list the fields to change: metadata, kwargs")
    for path in paths:
        if path in _MUTABLE_PATHS:
            continue
        kind = "is output only or immutable" if path in _RUN_FIELDS else "is not a Run field"
        v.add("update_mask", f"path {path!r} {kind}; only metadata and kwargs can change")
    metadata = v.struct("run.metadata", request.run.metadata, limits)
    kwargs = v.struct("run.kwargs", request.run.kwargs, limits)
    v.check()
    assert checked_id is not None
    return RunPatch(
        run_id=checked_id,
        metadata=metadata if "metadata" in paths else None,
        kwargs=kwargs if "kwargs" in paths else None,
        expected_revision=request.expected_revision,
    )


def cancel_run(
    request: run_service_pb2.CancelRunRequest,
) -> tuple[str, records.CancelAction, str]:
    v = _Violations()
    checked_id = v.uuid("run_id", request.run_id, required=True)
    action = convert.CANCEL_ACTION_FROM_PROTO.get(request.action)
    if action is None:
        v.add("action", f"unknown value {request.action}; use INTERRUPT or ROLLBACK")
    v.text("reason", request.reason, limit=MAX_REASON)
    v.check()
    assert checked_id is not None
    assert action is not None
    return checked_id, action, request.reason


def delete_run(request: run_service_pb2.DeleteRunRequest) -> tuple[str, int, bool]:
    v = _Violations()
    checked_id = v.uuid("run_id", request.run_id, required=True)
    v.revision("expected_revision", request.expected_revision)
    v.check()
    assert checked_id is not None
    return checked_id, request.expected_revision, request.force


def _lease_us(
    v: _Violations,
    request: run_service_pb2.ClaimRunRequest | run_service_pb2.HeartbeatRunRequest,
) -> int:
    """The requested lease in microseconds: 30 s when unset, at most an hour."""
    if not request.HasField("lease_duration"):
        return DEFAULT_LEASE_US
    lease = _positive_duration_us(v, "lease_duration", request.lease_duration)
    if lease is not None and lease > MAX_LEASE_US:
        v.add("lease_duration", "must be at most 1h; heartbeat to hold a run longer")
    return lease or DEFAULT_LEASE_US


def claim_run(request: run_service_pb2.ClaimRunRequest) -> ClaimRequest:
    v = _Violations()
    v.text("worker_id", request.worker_id, limit=MAX_WORKER_ID, required=True)
    for index, assistant_id in enumerate(request.assistant_ids):
        v.text(f"assistant_ids[{index}]", assistant_id, limit=MAX_ASSISTANT_ID, required=True)
    lease = _lease_us(v, request)
    wait_s = 0.0
    if request.HasField("wait"):
        if request.wait.seconds < 0 or request.wait.nanos < 0:
            v.add("wait", "must not be negative")
        wait_s = min(convert.duration_us(request.wait) / 1e6, MAX_CLAIM_WAIT_S)
    v.check()
    return ClaimRequest(
        worker_id=request.worker_id,
        assistant_ids=tuple(request.assistant_ids),
        lease_us=lease,
        wait_s=max(wait_s, 0.0),
    )


def heartbeat_run(request: run_service_pb2.HeartbeatRunRequest) -> tuple[str, str, int]:
    v = _Violations()
    checked_id = v.uuid("run_id", request.run_id, required=True)
    v.text("worker_id", request.worker_id, limit=MAX_WORKER_ID, required=True)
    lease = _lease_us(v, request)
    v.check()
    assert checked_id is not None
    return checked_id, request.worker_id, lease


_COMPLETION_STATUSES = {
    run_pb2.RUN_STATUS_SUCCESS: records.RunStatus.SUCCESS,
    run_pb2.RUN_STATUS_ERROR: records.RunStatus.ERROR,
}


def complete_run(request: run_service_pb2.CompleteRunRequest, limits: Limits) -> Completion:
    v = _Violations()
    checked_id = v.uuid("run_id", request.run_id, required=True)
    v.text("worker_id", request.worker_id, limit=MAX_WORKER_ID, required=True)
    status = _COMPLETION_STATUSES.get(request.status)
    if status is None:
        v.add("status", f"must be SUCCESS or ERROR, got {request.status}")
    v.text("error", request.error, limit=MAX_ERROR)
    metadata = v.struct("metadata", request.metadata, limits)
    v.check()
    assert checked_id is not None
    assert status is not None
    return Completion(
        run_id=checked_id,
        worker_id=request.worker_id,
        status=status,
        error=request.error,
        metadata=metadata,
    )


def _start_revision(v: _Violations, value: int) -> None:
    if value < 0:
        v.add("start_revision", f"must be 0 (from now) or a revision to start at, got {value}")


def watch_runs(request: run_service_pb2.WatchRunsRequest, limits: Limits) -> RunsWatch:
    v = _Violations()
    selected = run_filter(v, request.filter, limits)
    _start_revision(v, request.start_revision)
    if request.include_initial and request.start_revision:
        v.add(
            "include_initial",
            "cannot be combined with start_revision: the initial state is read at the "
            "current revision",
        )
    interval = request.progress_interval
    if interval.seconds < 0 or interval.nanos < 0:
        v.add("progress_interval", "must not be negative (0 means the default, 10 s)")
    v.check()
    return RunsWatch(
        run_filter=selected,
        start_revision=request.start_revision,
        include_initial=request.include_initial,
        progress_interval=clamp_progress_interval(interval.seconds + interval.nanos / 1e9),
    )


def watch_run(request: run_service_pb2.WatchRunRequest) -> tuple[str, int]:
    v = _Violations()
    checked_id = v.uuid("run_id", request.run_id, required=True)
    _start_revision(v, request.start_revision)
    v.check()
    assert checked_id is not None
    return checked_id, request.start_revision
