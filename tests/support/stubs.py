"""Raw runplane.v1 stubs and helpers to read rich error details off a failed call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from runplane.v1 import run_service_pb2_grpc


@contextmanager
def run_service(address: str) -> Iterator[run_service_pb2_grpc.RunServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield run_service_pb2_grpc.RunServiceStub(channel)


def seconds(value: float) -> duration_pb2.Duration:
    """A Duration of `value` seconds, to the microsecond the server keeps."""
    message = duration_pb2.Duration()
    message.FromMicroseconds(round(value * 1e6))
    return message


@dataclass
class Failure:
    """What a failed call told its caller: code, message and the rich details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: dict[str, str] = field(default_factory=dict)


def failure(error: grpc.RpcError) -> Failure:
    assert isinstance(error, grpc.Call)
    found = Failure(code=error.code(), message=error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None, f"{found.code} carried no google.rpc.Status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            found.reason, found.domain, found.metadata = (
                info.reason,
                info.domain,
                dict(info.metadata),
            )
        elif detail.Unpack(bad_request):
            found.violations = {v.field: v.description for v in bad_request.field_violations}
    return found


def refused(call: Callable[[], object]) -> Failure:
    """What a call that must fail told its caller."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return failure(caught.value)
