"""The one place that maps domain errors to gRPC statuses with rich details.

Each status carries a google.rpc.Status in the `grpc-status-details-bin` trailer
(grpcio-status) with an ErrorInfo (domain runplane.dev, the error's reason and
details), for bad input a BadRequest listing every field violation, and for a
caller over its rate a RetryInfo saying when to come back.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from runplane.server import errors

DOMAIN = "runplane.dev"

_CODES: dict[type[errors.RunplaneError], int] = {
    errors.InvalidInput: code_pb2.INVALID_ARGUMENT,
    errors.RunNotFound: code_pb2.NOT_FOUND,
    errors.RunAlreadyExists: code_pb2.ALREADY_EXISTS,
    errors.ThreadBusy: code_pb2.FAILED_PRECONDITION,
    errors.RunTerminal: code_pb2.FAILED_PRECONDITION,
    errors.RunInflight: code_pb2.FAILED_PRECONDITION,
    errors.RunNotPending: code_pb2.FAILED_PRECONDITION,
    errors.TooManyRuns: code_pb2.FAILED_PRECONDITION,
    errors.LeaseLost: code_pb2.FAILED_PRECONDITION,
    errors.RevisionMismatch: code_pb2.ABORTED,
    errors.StoreUnavailable: code_pb2.UNAVAILABLE,
    errors.RevisionCompacted: code_pb2.OUT_OF_RANGE,
    errors.ServerShuttingDown: code_pb2.UNAVAILABLE,
    errors.CredentialsMissing: code_pb2.UNAUTHENTICATED,
    errors.CredentialsInvalid: code_pb2.UNAUTHENTICATED,
    errors.PermissionDenied: code_pb2.PERMISSION_DENIED,
    errors.TooManyWatches: code_pb2.RESOURCE_EXHAUSTED,
    errors.RateLimited: code_pb2.RESOURCE_EXHAUSTED,
}


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def from_error(error: errors.RunplaneError) -> grpc.Status:
    details = [
        _packed(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.details)
        )
    ]
    if isinstance(error, errors.InvalidInput):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
        details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    if isinstance(error, errors.RateLimited):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(1, int(error.retry_delay * 1e9)))
        details.append(_packed(retry))
    status = status_pb2.Status(code=_CODES[type(error)], message=error.message, details=details)
    return rpc_status.to_status(status)


def internal(incident: str) -> grpc.Status:
    """An unexpected failure: a reference for the logs, never a trace or SQL."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=DOMAIN, metadata={"incident": incident}
    )
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; the server logged it as incident {incident}",
        details=[_packed(info)],
    )
    return rpc_status.to_status(status)
