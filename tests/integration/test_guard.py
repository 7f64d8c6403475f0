"""The seam between the guard and the servicer: `identity.caller()` inside a call.

A grpc.aio server with the real guard in front of handlers that answer with the
caller they see, reached over a real channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from runplane.server import identity
from runplane.server.guard import CallGuard
from runplane.server.identity import Authenticator
from runplane.server.limits import WatchCounter
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.auth import Caller, write_config

pytestmark = pytest.mark.timeout(30)

ALICE = Caller("alice", [("shop", "writer")])


async def answer_with_caller(request: Any, context: Any) -> run_pb2.Run:
    return run_pb2.Run(created_by=identity.caller().name)


async def stream_caller(request: Any, context: Any) -> AsyncIterator[Any]:
    for _ in range(2):
        yield run_service_pb2.WatchRunsResponse(
            events=[run_pb2.RunEvent(run=run_pb2.Run(created_by=identity.caller().name))]
        )


def handlers() -> grpc.GenericRpcHandler[Any, Any]:
    unary = {
        name: grpc.unary_unary_rpc_method_handler(
            answer_with_caller,
            request_deserializer=getattr(run_service_pb2, f"{name}Request").FromString,
            response_serializer=run_pb2.Run.SerializeToString,
        )
        for name in ("GetRun", "CreateRun")
    }
    watch = grpc.unary_stream_rpc_method_handler(
        stream_caller,
        request_deserializer=run_service_pb2.WatchRunsRequest.FromString,
        response_serializer=run_service_pb2.WatchRunsResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "runplane.v1.RunService", {**unary, "WatchRuns": watch}
    )


async def calls_see_their_caller(config: Path | None) -> list[str]:
    authenticator = Authenticator(config) if config else None
    server = grpc.aio.server(interceptors=[CallGuard(authenticator, WatchCounter(10))])
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = (("authorization", f"Bearer {ALICE.token}"),) if config else ()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            get = await stub.GetRun(run_service_pb2.GetRunRequest(), metadata=metadata)
            create = await stub.CreateRun(run_service_pb2.CreateRunRequest(), metadata=metadata)
            watched = [
                response.events[0].run.created_by
                async for response in stub.WatchRuns(
                    run_service_pb2.WatchRunsRequest(), metadata=metadata
                )
            ]
        return [get.created_by, create.created_by, *watched]
    finally:
        await server.stop(0)


def test_the_servicer_sees_the_authenticated_caller(tmp_path: Path) -> None:
    config = write_config(tmp_path / "auth.toml", [ALICE])
    assert asyncio.run(calls_see_their_caller(config)) == ["alice"] * 4


def test_without_auth_the_caller_is_the_anonymous_admin() -> None:
    assert asyncio.run(calls_see_their_caller(None)) == ["anonymous"] * 4


def test_outside_a_guarded_call_there_is_no_caller() -> None:
    with pytest.raises(LookupError):
        identity.caller()
