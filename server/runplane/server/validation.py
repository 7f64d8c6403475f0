"""Turns each runplane.v1 request into its `requests` dataclass, or InvalidInput.

One function per RPC, named after it. Every problem of a request is collected, so
one INVALID_ARGUMENT answer lists them all as BadRequest field violations. Nothing
here touches the database.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from runplane.server import convert, pages, records, requests
from runplane.server.access import Access
from runplane.server.errors import FieldViolation, InvalidInput
from runplane.server.records import RunFilter, SortOrder
from runplane.v1 import run_pb2, run_service_pb2

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_EXAMPLE = "123e4567-e89b-42d3-a456-426614174000"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# W3C traceparent in version 00's layout: version, trace id, parent id, flags (no all-zero id).
_TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)
MAX_TRACESTATE = 512
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
MIN_PRIORITY, MAX_PRIORITY = 0, 9
MIN_PROGRESS_INTERVAL = 1.0
MAX_PROGRESS_INTERVAL = 300.0
MAX_STRUCT_DEPTH = 31
"""Levels of nesting a Struct may have, itself included (a list is a level too).
Python's protobuf runtime refuses messages nested more than 100 deep, and every
JSON level of a Struct costs three (Struct, map entry, Value): a run with 32 levels
of metadata inside RunEvent and WatchRunsResponse no longer decodes (measured), 31
leaves room for the wrapping. Node's @bufbuild/protobuf (limit 100, map entries not
counted) decodes deeper still."""
MAX_FILTER_KEYS = 64
"""Metadata keys in one filter: each is a condition of the store's query."""
MAX_ASSISTANT_IDS = 256
MAX_STATUSES = 32
MAX_REPORTED_VIOLATIONS = 10
"""Violations listed in one error: the details travel in a trailer, which clients cap."""
ECHO = 80
"""Characters of a caller's value quoted back in an error message, at most."""
NUL_REFUSED = "contains a NUL character, which no string may contain"
# Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Duration's valid range: about +-10,000 years. In microseconds, a Duration added to
# any valid Timestamp stays far inside the store's BIGINT.
_MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000
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
            found = self._found[:MAX_REPORTED_VIOLATIONS]
            if len(self._found) > len(found):
                more = len(self._found) - len(found)
                found.append(FieldViolation("request", f"and {more} more problems"))
            raise InvalidInput(found)

    def uuid(self, field: str, value: str, *, required: bool) -> str | None:
        if not value:
            if required:
                self.add(field, f"is required: a canonical lowercase UUID like {_UUID_EXAMPLE}")
            return None
        if not _UUID.fullmatch(value):
            self.add(
                field,
                f"must be a canonical lowercase UUID like {_UUID_EXAMPLE}, got {_echo(value)}",
            )
            return None
        return value

    def text(self, field: str, value: str, *, limit: int, required: bool = False) -> None:
        if required and not value:
            self.add(field, f"is required (1 to {limit} characters)")
        elif len(value) > limit:
            self.add(field, f"has {len(value)} characters; at most {limit} are allowed")
        elif "\0" in value:
            self.add(field, NUL_REFUSED)

    def struct(self, field: str, value: struct_pb2.Struct, limits: Limits) -> records.JSONObject:
        size = value.ByteSize()
        if size > limits.max_struct_bytes:
            self.add(field, struct_too_large(size, limits))
            return {}
        try:
            return convert.document(value, MAX_STRUCT_DEPTH)
        except ValueError as error:
            self.add(field, str(error))
            return {}

    def count(self, field: str, count: int, limit: int) -> None:
        if count > limit:
            self.add(field, f"has {count} entries; at most {limit} are allowed")

    def revision(self, field: str, value: int) -> None:
        if value < 0:
            self.add(field, f"must be 0 (unconditional) or a revision, got {value}")

    def namespace(self, field: str, value: str) -> str | None:
        """A DNS label, or None when empty."""
        if not value:
            return None
        if not _DNS_LABEL.fullmatch(value):
            self.add(
                field,
                "must be a DNS label: 1 to 63 lowercase letters, digits and '-', starting "
                f"and ending with a letter or digit, got {_echo(value)}",
            )
            return None
        return value


def _echo(value: str) -> str:
    """A caller's value, quoted for an error message: a short prefix of it at most."""
    if len(value) <= ECHO:
        return repr(value)
    return f"{value[:ECHO]!r}... ({len(value)} characters)"


def struct_too_large(size: int, limits: Limits) -> str:
    return (
        f"is {size} bytes; the limit is {limits.max_struct_bytes} (server flag --max-struct-bytes)"
    )


def merged_metadata(
    stored: records.JSONObject, merged: records.JSONObject, limits: Limits
) -> records.JSONObject:
    """A run's metadata with a completion's merged in, or InvalidInput when the merge is
    larger than a run's metadata may be."""
    if not merged:
        return stored
    result = {**stored, **merged}
    size = convert.struct(result).ByteSize()
    if size > limits.max_struct_bytes:
        merged_size = struct_too_large(size, limits)
        raise InvalidInput([FieldViolation("metadata", f"merged into the run's {merged_size}")])
    return result


def _duration_us(v: _Violations, field: str, value: duration_pb2.Duration) -> int | None:
    """Microseconds of a Duration that is non-negative and inside protobuf's range
    (about 10,000 years); None after a violation."""
    seconds, nanos = value.seconds, value.nanos
    if seconds < 0 or nanos < 0:
        v.add(field, "must not be negative")
        return None
    if seconds > _MAX_DURATION_SECONDS or nanos >= _NANOS:
        v.add(field, "is outside the valid Duration range (at most 10,000 years)")
        return None
    return convert.duration_us(value)


def _positive_duration_us(
    violations: _Violations, field: str, value: duration_pb2.Duration
) -> int | None:
    us = _duration_us(violations, field, value)
    if us is not None and us <= 0:
        violations.add(field, "must be a positive duration")
        return None
    return us


def _timestamp_us(violations: _Violations, field: str, value: timestamp_pb2.Timestamp) -> int:
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < _NANOS):
        violations.add(field, "is outside the valid Timestamp range (years 1 to 9999)")
        return 0
    return convert.timestamp_us(value)


def _retry_policy(v: _Violations, message: run_pb2.RetryPolicy) -> records.RetryPolicy:
    field = "retry_policy"
    if message.max_attempts < 0:
        v.add(
            f"{field}.max_attempts",
            f"must be 0 (the server's --max-attempts) or more, got {message.max_attempts}",
        )
    initial = maximum = None
    if message.HasField("initial_backoff"):
        initial = _positive_duration_us(v, f"{field}.initial_backoff", message.initial_backoff)
    if message.HasField("maximum_backoff"):
        maximum = _positive_duration_us(v, f"{field}.maximum_backoff", message.maximum_backoff)
        if initial is not None and maximum is not None and maximum < initial:
            v.add(f"{field}.maximum_backoff", "must not be shorter than initial_backoff")
    coefficient = message.backoff_coefficient
    if not (coefficient == 0 or (math.isfinite(coefficient) and coefficient >= 1)):
        v.add(
            f"{field}.backoff_coefficient",
            f"must be 0 (the default, 2) or at least 1, got {coefficient}",
        )
    return records.RetryPolicy(
        max_attempts=message.max_attempts,
        initial_backoff=initial,
        backoff_coefficient=coefficient,
        maximum_backoff=maximum,
    )


def trace_context(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The caller's W3C trace context as a run keeps it. As the W3C recommendation asks,
    a malformed `traceparent` is ignored, not refused (the run starts no trace); so is
    a `tracestate` without one, too long, or with characters it may not hold."""
    if traceparent is None or _TRACEPARENT.fullmatch(traceparent) is None:
        return {}
    kept = {"traceparent": traceparent}
    if (
        tracestate
        and len(tracestate) <= MAX_TRACESTATE
        and tracestate.isascii()
        and tracestate.isprintable()
    ):
        kept["tracestate"] = tracestate
    return kept


def create_run(
    request: run_service_pb2.CreateRunRequest,
    limits: Limits,
    *,
    access: Access,
    trace_context: dict[str, str] | None = None,
) -> requests.CreateRun:
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
    namespace = v.namespace("namespace", request.namespace)
    retry_policy = (
        _retry_policy(v, request.retry_policy) if request.HasField("retry_policy") else None
    )
    priority = records.DEFAULT_PRIORITY
    if request.HasField("priority"):
        priority = request.priority
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            v.add("priority", f"must be {MIN_PRIORITY} to {MAX_PRIORITY}, got {priority}")
    v.check()
    return requests.CreateRun(
        access=access,
        assistant_id=request.assistant_id,
        thread_id=thread_id,
        run_id=run_id,
        metadata=metadata,
        kwargs=kwargs,
        strategy=strategy,
        request_id=request.request_id or None,
        timeout=timeout,
        start_after=start_after,
        namespace=namespace or records.DEFAULT_NAMESPACE,
        retry_policy=retry_policy,
        priority=priority,
        trace_context=trace_context or {},
    )


def _run_id(v: _Violations, value: str) -> str:
    """A required run_id: the caller checks `v` before using it."""
    return v.uuid("run_id", value, required=True) or ""


def get_run(request: run_service_pb2.GetRunRequest, *, access: Access) -> requests.GetRun:
    v = _Violations()
    checked_id = _run_id(v, request.run_id)
    v.check()
    return requests.GetRun(access=access, run_id=checked_id)


def _run_filter(
    v: _Violations, message: run_service_pb2.RunFilter, limits: Limits, field: str = "filter"
) -> tuple[RunFilter, str | None]:
    """The filter, and its namespace (None: every namespace)."""
    thread_id = v.uuid(f"{field}.thread_id", message.thread_id, required=False)
    v.text(f"{field}.assistant_id", message.assistant_id, limit=MAX_ASSISTANT_ID)
    statuses: set[records.RunStatus] = set()
    v.count(f"{field}.statuses", len(message.statuses), MAX_STATUSES)
    for index, status in enumerate(message.statuses[:MAX_STATUSES]):
        if status in convert.STATUS_FROM_PROTO:
            statuses.add(convert.STATUS_FROM_PROTO[status])
        else:
            v.add(f"{field}.statuses[{index}]", f"{status} is not a run status")
    v.count(f"{field}.metadata", len(message.metadata.fields), MAX_FILTER_KEYS)
    metadata = v.struct(f"{field}.metadata", message.metadata, limits)
    namespace = v.namespace(f"{field}.namespace", message.namespace)
    selected = RunFilter(
        thread_id=thread_id,
        assistant_id=message.assistant_id or None,
        statuses=frozenset(statuses),
        metadata=metadata,
    )
    return selected, namespace


def list_runs(
    request: run_service_pb2.ListRunsRequest, limits: Limits, *, access: Access
) -> requests.ListRuns:
    v = _Violations()
    selected, namespace = _run_filter(v, request.filter, limits)
    if request.page_size < 0:
        v.add("page_size", f"must not be negative, got {request.page_size}")
    page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    order = _ORDERS.get(" ".join(request.order_by.lower().split()))
    if order is None:
        v.add(
            "order_by",
            f"must be 'created_at desc' or 'created_at asc', got {_echo(request.order_by)}",
        )
    if len(request.page_token) > pages.MAX_TOKEN_CHARS:
        v.add("page_token", "is not a token ListRuns returned")
    v.check()
    assert order is not None
    return requests.ListRuns(
        access=access,
        run_filter=selected,
        order=order,
        page_size=page_size,
        page_token=request.page_token,
        namespace=namespace,
    )


def update_run(
    request: run_service_pb2.UpdateRunRequest, limits: Limits, *, access: Access
) -> requests.UpdateRun:
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
        v.add("update_mask", f"path {_echo(path)} {kind}; only metadata and kwargs can change")
    metadata = v.struct("run.metadata", request.run.metadata, limits)
    kwargs = v.struct("run.kwargs", request.run.kwargs, limits)
    v.check()
    assert checked_id is not None
    return requests.UpdateRun(
        access=access,
        run_id=checked_id,
        metadata=metadata if "metadata" in paths else None,
        kwargs=kwargs if "kwargs" in paths else None,
        expected_revision=request.expected_revision,
    )


def _cancel_action(v: _Violations, value: run_pb2.CancelAction.ValueType) -> records.CancelAction:
    action = convert.CANCEL_ACTION_FROM_PROTO.get(value)
    if action is None:
        v.add("action", f"unknown value {value}; use INTERRUPT or ROLLBACK")
        return records.CancelAction.INTERRUPT
    return action


def cancel_run(request: run_service_pb2.CancelRunRequest, *, access: Access) -> requests.CancelRun:
    v = _Violations()
    checked_id = _run_id(v, request.run_id)
    action = _cancel_action(v, request.action)
    v.text("reason", request.reason, limit=MAX_REASON)
    v.check()
    return requests.CancelRun(
        access=access, run_id=checked_id, action=action, reason=request.reason
    )


def cancel_runs(
    request: run_service_pb2.CancelRunsRequest, limits: Limits, *, access: Access
) -> requests.CancelRuns:
    v = _Violations()
    selected, namespace = _run_filter(v, request.filter, limits)
    given = request.filter
    if not (given.thread_id or given.assistant_id or given.metadata.fields):
        v.add(
            "filter",
            "must set thread_id, assistant_id or metadata: cancelling every run is refused",
        )
    action = _cancel_action(v, request.action)
    v.text("reason", request.reason, limit=MAX_REASON)
    v.check()
    return requests.CancelRuns(
        access=access,
        run_filter=selected,
        action=action,
        reason=request.reason,
        namespace=namespace,
    )


def delete_run(request: run_service_pb2.DeleteRunRequest, *, access: Access) -> requests.DeleteRun:
    v = _Violations()
    checked_id = _run_id(v, request.run_id)
    v.revision("expected_revision", request.expected_revision)
    v.check()
    return requests.DeleteRun(
        access=access,
        run_id=checked_id,
        expected_revision=request.expected_revision,
        force=request.force,
    )


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


def claim_run(request: run_service_pb2.ClaimRunRequest, *, access: Access) -> requests.ClaimRun:
    v = _Violations()
    v.text("worker_id", request.worker_id, limit=MAX_WORKER_ID, required=True)
    v.count("assistant_ids", len(request.assistant_ids), MAX_ASSISTANT_IDS)
    for index, assistant_id in enumerate(request.assistant_ids[:MAX_ASSISTANT_IDS]):
        v.text(f"assistant_ids[{index}]", assistant_id, limit=MAX_ASSISTANT_ID, required=True)
    lease = _lease_us(v, request)
    wait_us = _duration_us(v, "wait", request.wait) if request.HasField("wait") else None
    namespace = v.namespace("namespace", request.namespace)
    v.check()
    return requests.ClaimRun(
        access=access,
        worker_id=request.worker_id,
        assistant_ids=tuple(request.assistant_ids),
        lease_us=lease,
        wait_s=min((wait_us or 0) / 1e6, MAX_CLAIM_WAIT_S),
        namespace=namespace,
    )


def heartbeat_run(
    request: run_service_pb2.HeartbeatRunRequest, *, access: Access
) -> requests.HeartbeatRun:
    v = _Violations()
    checked_id = _run_id(v, request.run_id)
    v.text("worker_id", request.worker_id, limit=MAX_WORKER_ID, required=True)
    lease = _lease_us(v, request)
    v.check()
    return requests.HeartbeatRun(
        access=access, run_id=checked_id, worker_id=request.worker_id, lease_us=lease
    )


_COMPLETION_STATUSES = {
    run_pb2.RUN_STATUS_SUCCESS: records.RunStatus.SUCCESS,
    run_pb2.RUN_STATUS_ERROR: records.RunStatus.ERROR,
}


def complete_run(
    request: run_service_pb2.CompleteRunRequest, limits: Limits, *, access: Access
) -> requests.CompleteRun:
    v = _Violations()
    checked_id = _run_id(v, request.run_id)
    v.text("worker_id", request.worker_id, limit=MAX_WORKER_ID, required=True)
    status = _COMPLETION_STATUSES.get(request.status)
    if status is None:
        v.add("status", f"must be SUCCESS or ERROR, got {request.status}")
    v.text("error", request.error, limit=MAX_ERROR)
    metadata = v.struct("metadata", request.metadata, limits)
    result = v.struct("result", request.result, limits)
    v.check()
    assert status is not None
    return requests.CompleteRun(
        access=access,
        run_id=checked_id,
        worker_id=request.worker_id,
        status=status,
        error=request.error,
        metadata=metadata,
        result=result,
        retryable=request.retryable,
    )


def _start_revision(v: _Violations, value: int) -> None:
    if value < 0:
        v.add("start_revision", f"must be 0 (from now) or a revision to start at, got {value}")


def _progress_interval(seconds: float) -> float:
    if not seconds:
        return requests.DEFAULT_PROGRESS_INTERVAL
    return min(MAX_PROGRESS_INTERVAL, max(MIN_PROGRESS_INTERVAL, seconds))


def watch_runs(
    request: run_service_pb2.WatchRunsRequest, limits: Limits, *, access: Access
) -> requests.WatchRuns:
    v = _Violations()
    selected, namespace = _run_filter(v, request.filter, limits)
    _start_revision(v, request.start_revision)
    if request.include_initial and request.start_revision:
        v.add(
            "include_initial",
            "cannot be combined with start_revision: the initial state is read at the "
            "current revision",
        )
    interval = request.progress_interval
    _duration_us(v, "progress_interval", interval)
    v.check()
    return requests.WatchRuns(
        access=access,
        run_filter=selected,
        start_revision=request.start_revision,
        include_initial=request.include_initial,
        progress_interval=_progress_interval(interval.seconds + interval.nanos / 1e9),
        namespace=namespace,
    )


def watch_run(request: run_service_pb2.WatchRunRequest, *, access: Access) -> requests.WatchRun:
    v = _Violations()
    checked_id = _run_id(v, request.run_id)
    _start_revision(v, request.start_revision)
    v.check()
    return requests.WatchRun(
        access=access, run_id=checked_id, start_revision=request.start_revision
    )


def get_stats(request: run_service_pb2.GetStatsRequest, *, access: Access) -> requests.GetStats:
    v = _Violations()
    namespace = v.namespace("namespace", request.namespace)
    v.check()
    return requests.GetStats(access=access, namespace=namespace)
