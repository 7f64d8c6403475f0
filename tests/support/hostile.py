"""What a hostile or careless caller sends: deep structs, NUL characters, bytes that do
not decode; and how a test sees that the server refused it and changed nothing."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.stubs import Failure

RUN_SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
ALLOWED_DEPTH = 31
"""The deepest Struct the server accepts (the Struct itself counted)."""

LEAKS = (
    "Traceback",
    'File "',
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "sqlalchemy",
    "psycopg",
    " object at 0x",
)
"""What no error message may contain: a stack trace, SQL, a Python repr."""


def nested(depth: int, leaf: Any = "leaf", *, lists: bool = False) -> dict[str, Any]:
    """A document `depth` levels deep, itself counted: {"k": {"k": ... leaf}}, or lists
    inside the outermost object with `lists`."""
    value = leaf
    for _ in range(depth - 1):
        value = [value] if lists else {"k": value}
    return {"k": value}


def struct(document: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(document)
    return message


def store_revision(stub: run_service_pb2_grpc.RunServiceStub) -> int:
    """The store's revision, as ListRuns reports it."""
    return stub.ListRuns(run_service_pb2.ListRunsRequest(page_size=1)).revision


def serving(channel: grpc.Channel) -> bool:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def raw_call(
    channel: grpc.Channel, method: str, payload: bytes, timeout: float = 10
) -> list[bytes]:
    """Send `payload` as the request of RunService.`method`, whatever it holds; the
    response messages, undecoded."""
    path = f"/{RUN_SERVICE.full_name}/{method}"
    if RUN_SERVICE.methods_by_name[method].server_streaming:
        return list(channel.unary_stream(path, None, None)(payload, timeout=timeout))
    return [channel.unary_unary(path, None, None)(payload, timeout=timeout)]


def assert_clean(found: Failure) -> None:
    """The refusal names the problem, with nothing of the server's insides."""
    leaked = [marker for marker in LEAKS if marker in found.message]
    assert not leaked, (leaked, found.message)
    assert len(found.message) < 2000, len(found.message)
