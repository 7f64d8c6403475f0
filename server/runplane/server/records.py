"""Domain values shared by the rules and the store: plain Python, no gRPC, no SQL."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from typing import Any

JSONObject = dict[str, Any]

DEFAULT_NAMESPACE = "default"
ANONYMOUS = "anonymous"
"""The principal of every call while the server runs without authentication."""
DEFAULT_PRIORITY = 5


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch, the unit every stored time uses."""
    return time.time_ns() // 1000


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    ERROR = "error"
    SUCCESS = "success"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"

    @property
    def is_inflight(self) -> bool:
        return self in INFLIGHT


INFLIGHT = frozenset({RunStatus.PENDING, RunStatus.RUNNING})


class MultitaskStrategy(enum.StrEnum):
    REJECT = "reject"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"
    ENQUEUE = "enqueue"


class CancelAction(enum.StrEnum):
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class ChangeType(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class EventType(enum.StrEnum):
    """What a watch event says; the last three are the `ChangeType` of a logged change."""

    INITIAL = "initial"
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class SortOrder(enum.StrEnum):
    DESC = "desc"
    ASC = "asc"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failures of a run are retried, as its creator gave it (zero and None mean the
    documented defaults; they are resolved when a retry is decided)."""

    max_attempts: int = 0
    initial_backoff: int | None = None
    """Microseconds."""
    backoff_coefficient: float = 0.0
    maximum_backoff: int | None = None
    """Microseconds."""


@dataclass(slots=True)
class Run:
    """A run as the rules see it. Times are microseconds since the epoch (UTC).

    The store maps every field to a column and to the event log (`store/fields.py`):
    a new field is declared here and there, and nowhere else.
    """

    run_id: str
    thread_id: str
    assistant_id: str
    status: RunStatus
    multitask_strategy: MultitaskStrategy
    created_at: int
    updated_at: int
    metadata: JSONObject = field(default_factory=dict)
    kwargs: JSONObject = field(default_factory=dict)
    revision: int = 0
    attempt: int = 0
    started_at: int | None = None
    ended_at: int | None = None
    error: str = ""
    cancel_reason: str = ""
    worker_id: str = ""
    lease_expires_at: int | None = None
    timeout: int | None = None
    """Longest RUNNING time in microseconds, if any."""
    start_after: int | None = None
    request_id: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    created_by: str = ANONYMOUS
    trace_context: dict[str, str] = field(default_factory=dict)
    """The creator's W3C trace context (traceparent, tracestate)."""
    result: JSONObject = field(default_factory=dict)
    """What the run produced, as its worker reported it."""
    retry_policy: RetryPolicy | None = None
    priority: int = DEFAULT_PRIORITY

    def ended(
        self,
        status: RunStatus,
        at: int,
        *,
        error: str | None = None,
        cancel_reason: str | None = None,
    ) -> Run:
        """This run ended with `status` at `at`, its lease gone; `error` and
        `cancel_reason` replace the run's own where given."""
        return replace(
            self,
            status=status,
            error=self.error if error is None else error,
            cancel_reason=self.cancel_reason if cancel_reason is None else cancel_reason,
            ended_at=at,
            updated_at=at,
            lease_expires_at=None,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change; the store gives it the next global revision."""

    type: ChangeType
    run: Run
    """The run after the change; for a delete, its last state."""
    previous: Run | None = None
    """For an update, the run before it."""


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A run as a watcher receives it: a logged change, or the run's state (INITIAL).

    `revision` is the change's global revision; for INITIAL, the run's last change.
    """

    type: EventType
    revision: int
    run: Run
    previous: Run | None = None
    """For UPDATED, the run before the change, so filters can match either side."""


NamespaceSet = frozenset[str] | None
"""The namespaces a query covers: None is every namespace, an empty set none at all."""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Selects runs; an unset field matches every run, except `namespaces`."""

    thread_id: str | None = None
    assistant_id: str | None = None
    statuses: frozenset[RunStatus] = frozenset()
    metadata: JSONObject = field(default_factory=dict)
    namespaces: NamespaceSet = frozenset()
    """Where the runs may be. Unset, none: the rules fill it in from the caller's access
    (`Access.namespaces`), so a filter nobody narrowed selects nothing."""

    def matches(self, run: Run) -> bool:
        # Of a run before an update, the event log keeps only the attributes read here
        # (store/fields.py, `_FILTERED`): a new one must be added there too.
        return (
            (self.namespaces is None or run.namespace in self.namespaces)
            and (self.thread_id is None or run.thread_id == self.thread_id)
            and (self.assistant_id is None or run.assistant_id == self.assistant_id)
            and (not self.statuses or run.status in self.statuses)
            and (
                not self.metadata  # the common case, without a generator per call
                or all(
                    key in run.metadata and same_json(run.metadata[key], value)
                    for key, value in self.metadata.items()
                )
            )
        )


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, as the store compares them: unlike Python's ==, true is not
    1 (numbers compare by value, 1 and 1.0 alike)."""
    if type(a) is bool or type(b) is bool:
        return a is b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_json(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(same_json(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Keyset position: the sort key of the last run of the previous page."""

    created_at: int
    run_id: str


@dataclass(frozen=True, slots=True)
class QueueCount:
    """The claimable runs of one assistant in one namespace."""

    namespace: str
    assistant_id: str
    depth: int
    oldest_due: int
    """When the longest-waiting of them became due (microseconds)."""


@dataclass(frozen=True, slots=True)
class RunCount:
    """How many inflight runs one namespace holds in one status."""

    namespace: str
    status: RunStatus
    count: int
