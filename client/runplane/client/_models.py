"""Plain Python values the client hands out and accepts.

Callers never see protobuf messages: a `Run` is a frozen dataclass with
timezone-aware UTC datetimes, `timedelta` durations and plain dicts. The enums
are string enums whose values are the lowercase words people type, and they
accept any casing (`RunStatus("PENDING") is RunStatus.PENDING`), so every
method taking an enum takes the string as well.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self


class _WordEnum(enum.StrEnum):
    """A string enum looked up case-insensitively, naming the allowed words on a miss."""

    @classmethod
    def _missing_(cls, value: object) -> Self:
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        allowed = ", ".join(member.value for member in cls)
        raise ValueError(f"{value!r} is not a valid {cls.__name__}; expected one of: {allowed}")


class RunStatus(_WordEnum):
    """Lifecycle of a run. PENDING and RUNNING are inflight; the rest are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    ERROR = "error"
    SUCCESS = "success"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        """Whether the run is done: a terminal run never changes status again."""
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)


class MultitaskStrategy(_WordEnum):
    """What creating a run does when its thread already has inflight runs."""

    REJECT = "reject"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"
    ENQUEUE = "enqueue"


class CancelAction(_WordEnum):
    """How cancelling disposes of an inflight run: keep it INTERRUPTED, or delete it."""

    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class EventType(_WordEnum):
    """Kind of change a `RunEvent` carries; INITIAL is current state, not a change."""

    INITIAL = "initial"
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class RunRetryPolicy:
    """How the server tries a run again after a failed attempt: its worker completed it
    with a retryable ERROR (`RetryableError` in a `Worker`), or its lease expired.

    Attempt n is followed by a wait of min(initial_backoff * backoff_coefficient^(n-1),
    maximum_backoff) before the run is claimable again, until it was claimed
    `max_attempts` times; then it is ERROR. Unset values take the server's defaults:
    `max_attempts` 0 is the server's --max-attempts, `initial_backoff` 1 s,
    `backoff_coefficient` 0 is 2, `maximum_backoff` 100 times `initial_backoff`.
    (Not `RetryPolicy`, which is how the client retries its own calls.)
    """

    max_attempts: int = 0
    initial_backoff: timedelta | None = None
    backoff_coefficient: float = 0.0
    maximum_backoff: timedelta | None = None


@dataclass(frozen=True)
class Run:
    """One run of an assistant on a conversation thread, as the server last recorded it.

    `metadata` and `kwargs` travel as `google.protobuf.Struct`, whose numbers are
    doubles: integral numbers come back as `int` (`{"n": 1}`, not `{"n": 1.0}`),
    and integers beyond 2**53 lose precision on the way.
    """

    run_id: str
    namespace: str
    """The tenant it belongs to; a thread is (namespace, thread_id)."""
    thread_id: str
    assistant_id: str
    created_at: datetime
    created_by: str
    """The principal that created it (`anonymous` on a server without authentication)."""
    updated_at: datetime
    status: RunStatus
    metadata: dict[str, Any]
    kwargs: dict[str, Any]
    multitask_strategy: MultitaskStrategy
    revision: int
    attempt: int
    started_at: datetime | None
    ended_at: datetime | None
    lease_expires_at: datetime | None
    start_after: datetime | None
    error: str
    cancel_reason: str
    worker_id: str
    timeout: timedelta | None
    trace_context: dict[str, str]
    """The W3C trace context (`traceparent`, `tracestate`) of the call that created the
    run, which a worker continues; empty when the creator was not traced."""
    priority: int
    """0 to 9: among runs ready to start, higher priorities are claimed first."""
    retry_policy: RunRetryPolicy | None
    """How failed attempts are retried; None when the run has no policy."""
    result: dict[str, Any]
    """What the run produced, as its worker reported it (a `Worker`: its handler's
    return value); empty until then."""


@dataclass(frozen=True)
class RunEvent:
    """One change to a run at a global revision; DELETED carries the run's last state."""

    type: EventType
    revision: int
    run: Run


@dataclass(frozen=True)
class CancelledRuns:
    """What `cancel_runs` did: how many runs it cancelled, and the store revision of its
    last change (the current revision when nothing matched)."""

    count: int
    revision: int


@dataclass(frozen=True)
class RunPage:
    """One page of a listing, read at store revision `revision`.

    `revision` is where a watch of the same filter can start (revision + 1) to
    see every later change without a gap.
    """

    runs: list[Run]
    next_page_token: str
    revision: int


@dataclass(frozen=True)
class QueueStats:
    """Claimable runs waiting for one assistant in one namespace."""

    namespace: str
    assistant_id: str
    depth: int
    """PENDING runs that are due and first in their thread's line."""
    oldest_age: timedelta
    """How long the longest-waiting of them has been due."""


@dataclass(frozen=True)
class RunCount:
    """How many inflight runs one namespace holds in one status."""

    namespace: str
    status: RunStatus
    count: int


@dataclass(frozen=True)
class Stats:
    """The operator's overview, read from the database at store revision `revision`
    (the same on every replica), except `open_watches`: the answering replica's own."""

    queues: list[QueueStats]
    runs: list[RunCount]
    open_watches: int
    revision: int
    compact_revision: int
