"""One validated request per RPC: what `validation` makes of a runplane.v1 request and
the domain receives. Plain values (times in microseconds, durations in microseconds
unless named in seconds), no protobuf.

Each carries the call's `access` (who calls, with which role): the rules ask it about
every run they act on and for the namespaces a query covers. It is required, so no
request reaches the rules without it. A `namespace` field is the one the request names
(a DNS label), or None for "every namespace the caller may use for this call".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runplane.server.access import Access
from runplane.server.records import (
    DEFAULT_NAMESPACE,
    DEFAULT_PRIORITY,
    CancelAction,
    JSONObject,
    MultitaskStrategy,
    RetryPolicy,
    RunFilter,
    RunStatus,
    SortOrder,
)

DEFAULT_PROGRESS_INTERVAL = 10.0
"""Seconds between bookmarks on a quiet watch stream, unless the request says."""


@dataclass(frozen=True, slots=True)
class CreateRun:
    access: Access = field(kw_only=True)
    assistant_id: str
    thread_id: str | None = None
    run_id: str | None = None
    metadata: JSONObject = field(default_factory=dict)
    kwargs: JSONObject = field(default_factory=dict)
    strategy: MultitaskStrategy = MultitaskStrategy.ENQUEUE
    request_id: str | None = None
    timeout: int | None = None
    start_after: int | None = None
    namespace: str = DEFAULT_NAMESPACE
    retry_policy: RetryPolicy | None = None
    priority: int = DEFAULT_PRIORITY
    trace_context: dict[str, str] = field(default_factory=dict)
    """The caller's W3C trace context (`traceparent`, `tracestate`), if it sent one."""


@dataclass(frozen=True, slots=True)
class GetRun:
    access: Access = field(kw_only=True)
    run_id: str


@dataclass(frozen=True, slots=True)
class ListRuns:
    access: Access = field(kw_only=True)
    run_filter: RunFilter
    order: SortOrder
    page_size: int
    page_token: str = ""
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateRun:
    """None leaves a field as it is."""

    access: Access = field(kw_only=True)
    run_id: str
    metadata: JSONObject | None = None
    kwargs: JSONObject | None = None
    expected_revision: int = 0


@dataclass(frozen=True, slots=True)
class CancelRun:
    access: Access = field(kw_only=True)
    run_id: str
    action: CancelAction = CancelAction.INTERRUPT
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelRuns:
    access: Access = field(kw_only=True)
    run_filter: RunFilter
    action: CancelAction = CancelAction.INTERRUPT
    reason: str = ""
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteRun:
    access: Access = field(kw_only=True)
    run_id: str
    expected_revision: int = 0
    force: bool = False


@dataclass(frozen=True, slots=True)
class ClaimRun:
    access: Access = field(kw_only=True)
    worker_id: str
    assistant_ids: tuple[str, ...]
    lease_us: int
    wait_s: float
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatRun:
    access: Access = field(kw_only=True)
    run_id: str
    worker_id: str
    lease_us: int


@dataclass(frozen=True, slots=True)
class CompleteRun:
    access: Access = field(kw_only=True)
    run_id: str
    worker_id: str
    status: RunStatus
    error: str = ""
    metadata: JSONObject = field(default_factory=dict)
    """Merged into the run's metadata."""
    result: JSONObject = field(default_factory=dict)
    retryable: bool = False
    """With ERROR: the worker asks for another attempt, which the run's retry policy may give."""


@dataclass(frozen=True, slots=True)
class WatchRuns:
    access: Access = field(kw_only=True)
    run_filter: RunFilter
    start_revision: int = 0
    """Inclusive; 0 means from now."""
    include_initial: bool = False
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class WatchRun:
    access: Access = field(kw_only=True)
    run_id: str
    start_revision: int = 0
    """Inclusive; 0 means the current state first."""


@dataclass(frozen=True, slots=True)
class GetStats:
    access: Access = field(kw_only=True)
    namespace: str | None = None
