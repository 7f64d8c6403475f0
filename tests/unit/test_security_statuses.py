"""The security errors as callers receive them: code, ErrorInfo and, when over the rate,
RetryInfo."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from runplane.server import errors, status


def decoded(error: errors.RunplaneError) -> tuple[grpc.StatusCode, dict[str, object]]:
    rich = status.from_error(error)
    found: dict[str, object] = {}
    trailer = dict(rich.trailing_metadata)["grpc-status-details-bin"]
    google_status = status_pb2.Status.FromString(trailer)
    for detail in google_status.details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            found.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif detail.Unpack(retry):
            found["retry_s"] = retry.retry_delay.ToTimedelta().total_seconds()
    return rich.code, found


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    [
        (errors.CredentialsMissing(), grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING", {}),
        (
            errors.CredentialsInvalid("unknown bearer token"),
            grpc.StatusCode.UNAUTHENTICATED,
            "CREDENTIALS_INVALID",
            {},
        ),
        (
            errors.PermissionDenied("viewer", "writer"),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            {"role_needed": "writer"},
        ),
        (
            errors.PermissionDenied("viewer", "writer", namespace="shop"),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            {"role_needed": "writer", "namespace": "shop"},
        ),
        (
            errors.TooManyWatches("viewer", 1000),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_WATCHES",
            {"limit": "1000"},
        ),
    ],
)
def test_security_errors_carry_their_reason(
    error: errors.RunplaneError,
    code: grpc.StatusCode,
    reason: str,
    metadata: dict[str, str],
) -> None:
    found_code, found = decoded(error)
    assert found_code == code
    assert found == {"reason": reason, "domain": "runplane.dev", "metadata": metadata}


def test_permission_denied_says_where_the_role_is_missing() -> None:
    assert "in namespace shop" in errors.PermissionDenied("p", "writer", "shop").message
    assert "holds in no namespace" in errors.PermissionDenied("p", "writer").message


def test_rate_limited_says_when_to_come_back() -> None:
    code, found = decoded(errors.RateLimited("viewer", 0.25))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert found["reason"] == "RATE_LIMITED"
    assert found["retry_s"] == pytest.approx(0.25)
