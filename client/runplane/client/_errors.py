"""Errors raised by the runplane client: one class per gRPC status code.

The server sends every error as a gRPC status plus a `google.rpc.Status` in
the `grpc-status-details-bin` trailer, carrying an `ErrorInfo` (domain
`runplane.dev`, a stable reason, metadata) and, for bad input, `BadRequest`
field violations. `from_grpc_error` unpacks those into the class for the code,
or for the reason where callers act on it:

    RunplaneError
    ├── Cancelled
    ├── Unknown
    ├── InvalidArgument
    ├── DeadlineExceeded
    ├── NotFound
    │   └── RunDeleted           wait_run: the run was deleted before it ended
    ├── AlreadyExists
    ├── PermissionDenied         `role_needed` (and `namespace`) in its metadata
    ├── ResourceExhausted
    │   ├── RateLimited          reason RATE_LIMITED: over the rate; see retry_delay
    │   └── TooManyWatches       reason TOO_MANY_WATCHES: close a watch first
    ├── FailedPrecondition
    │   ├── ThreadBusy           reason THREAD_BUSY: REJECT met an inflight run
    │   ├── RunTerminal          reason RUN_TERMINAL: cancelling a finished run
    │   ├── RunInflight          reason RUN_INFLIGHT: deleting a live run without force
    │   └── LeaseLost            reason LEASE_LOST: the worker no longer holds the run
    ├── Aborted
    │   └── RevisionMismatch     reason REVISION_MISMATCH: expected_revision was stale
    ├── OutOfRange
    │   └── RevisionCompacted    reason REVISION_COMPACTED: watch start below retention
    ├── Unimplemented
    ├── Internal
    ├── Unavailable
    ├── DataLoss
    └── Unauthenticated          reason CREDENTIALS_MISSING or CREDENTIALS_INVALID
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "runplane.dev"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class RunplaneError(Exception):
    """A failed call. `code` is the gRPC status; the rest comes from the rich status."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.field_violations = field_violations or []
        self.retry_delay = retry_delay
        """Seconds the server asked the caller to wait before retrying (RetryInfo)."""

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        return f"{text} (reason {self.reason})" if self.reason else text


class Cancelled(RunplaneError):
    code = grpc.StatusCode.CANCELLED


class Unknown(RunplaneError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(RunplaneError):
    """Bad input; `field_violations` says which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RunplaneError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RunplaneError):
    code = grpc.StatusCode.NOT_FOUND


class RunDeleted(NotFound):
    """`wait_run` saw the run deleted (rolled back, or deleted with force) before it ended."""


class AlreadyExists(RunplaneError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RunplaneError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RunplaneError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RunplaneError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RunplaneError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(RunplaneError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(RunplaneError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RunplaneError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(RunplaneError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(RunplaneError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(RunplaneError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ThreadBusy(FailedPrecondition):
    """A REJECT create found an inflight run on the thread; nothing was written."""

    @property
    def thread_id(self) -> str:
        return self.metadata.get("thread_id", "")

    @property
    def run_id(self) -> str:
        """The inflight run that blocked the create."""
        return self.metadata.get("run_id", "")


class RunTerminal(FailedPrecondition):
    """The run already finished, so it can no longer be cancelled."""


class RunInflight(FailedPrecondition):
    """The run is PENDING or RUNNING: cancel it first, or delete with force."""


class LeaseLost(FailedPrecondition):
    """The worker no longer holds the run (interrupted, timed out, re-claimed): stop."""


class RateLimited(ResourceExhausted):
    """The caller is over its request rate: retry after `retry_delay` seconds."""


class TooManyWatches(ResourceExhausted):
    """The caller holds as many open watches as the server allows."""


class RevisionMismatch(Aborted):
    """The run changed since the revision the caller expected: re-read and retry."""


class RevisionCompacted(OutOfRange):
    """The requested start revision is older than the event log keeps: relist."""

    @property
    def compact_revision(self) -> int:
        """The event log keeps only the revisions after this one."""
        return int(self.metadata.get("compact_revision", 0))

    @property
    def current_revision(self) -> int:
        return int(self.metadata.get("current_revision", 0))


_BY_CODE: dict[grpc.StatusCode, type[RunplaneError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}

_BY_REASON: dict[str, type[RunplaneError]] = {
    "THREAD_BUSY": ThreadBusy,
    "RUN_TERMINAL": RunTerminal,
    "RUN_INFLIGHT": RunInflight,
    "LEASE_LOST": LeaseLost,
    "REVISION_MISMATCH": RevisionMismatch,
    "REVISION_COMPACTED": RevisionCompacted,
    "RATE_LIMITED": RateLimited,
    "TOO_MANY_WATCHES": TooManyWatches,
}


def from_grpc_error(error: grpc.RpcError) -> RunplaneError:
    """The runplane exception for a failed call, sync (`grpc.Call`) or asyncio (`AioRpcError`).

    Both kinds expose `code()`, `details()` and `trailing_metadata()`, so the rich
    status is read straight from the trailer, as `grpc_status.rpc_status.from_call`
    does, minus its ValueError when a proxy rewrote the code: the transport's code wins.
    """
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return Unknown(str(error) or type(error).__name__)
    code = error.code()
    message = error.details() or code.name
    rich = _rich_status(error.trailing_metadata() or ())
    info = error_details_pb2.ErrorInfo()
    bad_request = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    retry_delay = None
    for detail in rich.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
        elif detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, Unknown)
    reason_cls = _BY_REASON.get(info.reason) if info.domain == ERROR_DOMAIN else None
    if reason_cls is not None and issubclass(reason_cls, cls):
        cls = reason_cls
    return cls(
        message,
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        field_violations=[(v.field, v.description) for v in bad_request.field_violations],
        retry_delay=retry_delay,
    )


def _rich_status(trailers: Iterable[Any]) -> status_pb2.Status:
    """The google.rpc.Status in the trailers, or an empty one when the server sent none.

    Trailers are (key, value) pairs at runtime for both stacks; grpc-stubs types the
    sync and aio flavours differently, hence `Any`.
    """
    status = status_pb2.Status()
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY:
            status.ParseFromString(value)
    return status
