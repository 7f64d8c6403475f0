"""The domain's own errors. Only the servicer turns them into gRPC statuses."""

from __future__ import annotations

from dataclasses import dataclass


class RunplaneError(Exception):
    """Base of every error the rules raise on purpose.

    `reason` is the stable, machine-readable cause (the ErrorInfo reason on the
    wire); `details` carries the values a caller needs to act on it.
    """

    reason: str = ""

    def __init__(self, message: str, **details: str) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidInput(RunplaneError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation]) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}")
        self.violations = violations


class RunNotFound(RunplaneError):
    reason = "RUN_NOT_FOUND"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} not found", run_id=run_id)


class RunAlreadyExists(RunplaneError):
    reason = "RUN_ALREADY_EXISTS"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} already exists", run_id=run_id)


class ThreadBusy(RunplaneError):
    reason = "THREAD_BUSY"

    def __init__(self, thread_id: str, run_id: str) -> None:
        super().__init__(
            f"thread {thread_id} already has inflight run {run_id} and the strategy is reject",
            thread_id=thread_id,
            run_id=run_id,
        )


class RunTerminal(RunplaneError):
    reason = "RUN_TERMINAL"

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} is already {status}", run_id=run_id, status=status)


class RunInflight(RunplaneError):
    reason = "RUN_INFLIGHT"

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"run {run_id} is {status}; cancel it first or delete with force",
            run_id=run_id,
            status=status,
        )


class RunNotPending(RunplaneError):
    reason = "RUN_NOT_PENDING"

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"kwargs of run {run_id} can only change while it is pending; it is {status}",
            run_id=run_id,
            status=status,
        )


class RevisionMismatch(RunplaneError):
    reason = "REVISION_MISMATCH"

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"run {run_id} is at revision {actual}, not the expected {expected}",
            run_id=run_id,
            expected_revision=str(expected),
            current_revision=str(actual),
        )


class TooManyRuns(RunplaneError):
    reason = "TOO_MANY_RUNS"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the filter matches more than {limit} inflight runs, the most one CancelRuns "
            "cancels; nothing was cancelled: narrow the filter (a thread, metadata, a status)",
            limit=str(limit),
        )


class StoreUnavailable(RunplaneError):
    """The database cannot serve the call now (down, unreachable, out of disk space...):
    a write happened whole or not at all, and the call may be retried."""

    reason = "STORE_UNAVAILABLE"

    def __init__(self, why: str = "unavailable") -> None:
        super().__init__(f"the database is {why}; retry later", why=why)


class LeaseLost(RunplaneError):
    reason = "LEASE_LOST"

    def __init__(self, run_id: str, worker_id: str, why: str) -> None:
        super().__init__(
            f"worker {worker_id} no longer holds run {run_id}: {why}; stop working on it",
            run_id=run_id,
            worker_id=worker_id,
        )


class RevisionCompacted(RunplaneError):
    """A watch asked for history the event log no longer keeps; the caller relists."""

    reason = "REVISION_COMPACTED"

    def __init__(self, requested: int, compact_revision: int, current_revision: int) -> None:
        super().__init__(
            f"revision {requested} was compacted: the event log keeps revisions after "
            f"{compact_revision} (now at {current_revision}); list the runs again and watch "
            f"from the list's revision + 1",
            requested_revision=str(requested),
            compact_revision=str(compact_revision),
            current_revision=str(current_revision),
        )
        self.compact_revision = compact_revision
        self.current_revision = current_revision


class ServerShuttingDown(RunplaneError):
    """The server is draining: watches end so clients resume on another replica, and new
    calls are refused so that clients retry there."""

    reason = "SHUTTING_DOWN"

    def __init__(self, then: str = "resume the watch from the last revision") -> None:
        super().__init__(f"the server is shutting down; {then}")


class CredentialsMissing(RunplaneError):
    """Authentication is on and the call carried neither a token nor a client certificate."""

    reason = "CREDENTIALS_MISSING"

    def __init__(self) -> None:
        super().__init__(
            "this server requires credentials: an 'authorization: Bearer <token>' metadata "
            "entry or a client certificate"
        )


class CredentialsInvalid(RunplaneError):
    """The credential presented is unknown, malformed, expired or badly signed."""

    reason = "CREDENTIALS_INVALID"

    def __init__(self, why: str) -> None:
        super().__init__(f"credentials rejected: {why}")


class PermissionDenied(RunplaneError):
    reason = "PERMISSION_DENIED"

    def __init__(self, principal: str, role_needed: str, namespace: str = "") -> None:
        details = {"role_needed": role_needed}
        if namespace:
            details["namespace"] = namespace
            lacking = f"the {role_needed} role in namespace {namespace}"
        else:
            lacking = f"the {role_needed} role, which it holds in no namespace"
        super().__init__(f"{principal} may not make this call: it needs {lacking}", **details)


class TooManyWatches(RunplaneError):
    reason = "TOO_MANY_WATCHES"

    def __init__(self, principal: str, limit: int) -> None:
        super().__init__(
            f"{principal} already has {limit} open watches, the most this server allows; "
            "close one first",
            limit=str(limit),
        )


class RateLimited(RunplaneError):
    """The caller exceeded its request rate; `retry_delay` seconds until a call is allowed."""

    reason = "RATE_LIMITED"

    def __init__(self, principal: str, retry_delay: float) -> None:
        super().__init__(
            f"{principal} is over its request rate; retry in {retry_delay:.3f} s",
        )
        self.retry_delay = retry_delay


class CannotStart(Exception):
    """The server cannot start as configured (its port, its database): one line for the
    operator, who must fix the configuration; never a gRPC status."""
