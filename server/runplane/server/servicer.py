"""RunService over gRPC: validate the request, call the rules, convert the answer.

This is the only module that knows gRPC status codes; every error leaves through
`_rpc`, which maps it with `status`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from runplane.server import convert, status, validation
from runplane.server.claims import ClaimService
from runplane.server.errors import RunplaneError
from runplane.server.runs import RunService
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[["RunServicer", Request, Context], Awaitable[Response]]


def _rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Map the domain's errors to their statuses, and anything else to INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: RunServicer, request: Request, context: Context) -> Response:
        try:
            return await handler(self, request, context)
        except RunplaneError as error:
            rich = status.from_error(error)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("unexpected failure", extra={"incident": incident})
            rich = status.internal(incident)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)
        raise AssertionError("ServicerContext.abort returns by raising")

    return wrapper


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    def __init__(self, runs: RunService, claims: ClaimService, limits: validation.Limits) -> None:
        self._runs = runs
        self._claims = claims
        self._limits = limits

    @_rpc
    async def CreateRun(
        self, request: run_service_pb2.CreateRunRequest, context: Context
    ) -> run_pb2.Run:
        run = await self._runs.create(validation.create_run(request, self._limits))
        return convert.run_to_proto(run)

    @_rpc
    async def GetRun(self, request: run_service_pb2.GetRunRequest, context: Context) -> run_pb2.Run:
        run = await self._runs.get(validation.run_id(request.run_id))
        return convert.run_to_proto(run)

    @_rpc
    async def ListRuns(
        self, request: run_service_pb2.ListRunsRequest, context: Context
    ) -> run_service_pb2.ListRunsResponse:
        page = await self._runs.list(validation.list_runs(request, self._limits))
        return run_service_pb2.ListRunsResponse(
            runs=[convert.run_to_proto(run) for run in page.runs],
            next_page_token=page.next_page_token,
            revision=page.revision,
        )

    @_rpc
    async def UpdateRun(
        self, request: run_service_pb2.UpdateRunRequest, context: Context
    ) -> run_pb2.Run:
        run = await self._runs.update(validation.update_run(request, self._limits))
        return convert.run_to_proto(run)

    @_rpc
    async def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, context: Context
    ) -> run_pb2.Run:
        run = await self._runs.cancel(*validation.cancel_run(request))
        return convert.run_to_proto(run)

    @_rpc
    async def DeleteRun(
        self, request: run_service_pb2.DeleteRunRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._runs.delete(*validation.delete_run(request))
        return empty_pb2.Empty()

    @_rpc
    async def ClaimRun(
        self, request: run_service_pb2.ClaimRunRequest, context: Context
    ) -> run_service_pb2.ClaimRunResponse:
        run = await self._claims.claim(validation.claim_run(request))
        if run is None:
            return run_service_pb2.ClaimRunResponse()
        return run_service_pb2.ClaimRunResponse(run=convert.run_to_proto(run))

    @_rpc
    async def HeartbeatRun(
        self, request: run_service_pb2.HeartbeatRunRequest, context: Context
    ) -> run_pb2.Run:
        run = await self._claims.heartbeat(*validation.heartbeat_run(request))
        return convert.run_to_proto(run)

    @_rpc
    async def CompleteRun(
        self, request: run_service_pb2.CompleteRunRequest, context: Context
    ) -> run_pb2.Run:
        run = await self._claims.complete(validation.complete_run(request, self._limits))
        return convert.run_to_proto(run)

    # The watch streams are part of the contract but not served yet: callers get
    # an explicit UNIMPLEMENTED.

    async def WatchRuns(
        self, request: run_service_pb2.WatchRunsRequest, context: Context
    ) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "WatchRuns is not served yet")
        yield run_service_pb2.WatchRunsResponse()

    async def WatchRun(
        self, request: run_service_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "WatchRun is not served yet")
        yield run_service_pb2.WatchRunsResponse()
