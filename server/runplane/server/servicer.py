"""RunService over gRPC: validate the request into its `requests` dataclass, with the
call's `Access` (made once, by `_rpc` or `_watch`, from the caller the guard admitted),
call the rules with it, convert the answer.

This is the only module that knows gRPC status codes; every error leaves through
`_rpc`, which maps it with `status`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from runplane.server import convert, identity, status, validation
from runplane.server.access import Access
from runplane.server.claims import ClaimService
from runplane.server.errors import RunplaneError
from runplane.server.records import EventType, RunEvent
from runplane.server.runs import RunService
from runplane.server.watch.streams import WatchService
from runplane.server.watch.watcher import Delivery
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

WATCH_OPEN_METADATA = (("runplane-watch", "open"),)
"""The headers of a watch stream that started: the bundled clients look for them."""

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[["RunServicer", Request, Context], Awaitable[Response]]
Rules = Callable[["RunServicer", Request, Access], Awaitable[Response]]
"""A handler body: the request and the call's access in, the response out."""


def _failure_status(error: Exception) -> grpc.Status:
    if isinstance(error, RunplaneError):
        return status.from_error(error)
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected failure", exc_info=error, extra={"incident": incident})
    return status.internal(incident)


def _rpc(handler: Rules[Request, Response]) -> Handler[Request, Response]:
    """Give the handler the call's access; map the domain's errors to their statuses,
    and anything else to INTERNAL."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: RunServicer, request: Request, context: Context) -> Response:
        try:
            return await handler(self, request, Access.of(identity.caller(), method, request))
        except Exception as error:
            rich = _failure_status(error)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)
        raise AssertionError("ServicerContext.abort returns by raising")

    return wrapper


def _watch(
    opener: Callable[[RunServicer, Request, Access], Awaitable[AsyncIterator[Delivery]]],
) -> Callable[[RunServicer, Request, Context], AsyncIterator[run_service_pb2.WatchRunsResponse]]:
    """A watch handler from a coroutine that opens the domain's stream of deliveries,
    given the call's access: each delivery goes out as WatchRunsResponse messages; an
    error, raised at the start or later, ends the stream with its status (as `_rpc` does
    for unary calls). One generator between grpc and the watcher, since each layer costs
    every message.
    """
    method = opener.__name__

    @functools.wraps(opener)
    async def handler(
        self: RunServicer, request: Request, context: Context
    ) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
        try:
            access = Access.of(identity.caller(), method, request)
            deliveries = await opener(self, request, access)
            # Headers now rather than with the first message, which may be a while
            # coming: they tell the client the watch is open, so it resumes it after a
            # drop instead of failing as it does when the server cannot be reached.
            await context.send_initial_metadata(WATCH_OPEN_METADATA)
            async for delivery in deliveries:
                for response in self._event_messages.responses(delivery):
                    yield response
            return
        except Exception as error:
            rich = _failure_status(error)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)

    return handler


MAX_MESSAGE_BYTES = 1 << 20
"""A delivery is cut into messages of about this size, well under the 4 MiB that
gRPC clients accept by default (one event is at most ~0.5 MiB: two 256 KiB structs)."""


class _EventMessages:
    """Watch messages built once for all the streams that send them.

    Live streams of one filter get the very same deliveries, so whole responses are
    kept (by the revisions they carry) as well as each event's message: a change
    seen by a thousand streams is converted once, and only serialized per stream.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self._capacity = capacity
        self._events: dict[int, tuple[run_pb2.RunEvent, int]] = {}
        self._responses: dict[
            tuple[tuple[int, ...], int], list[run_service_pb2.WatchRunsResponse]
        ] = {}

    def responses(self, delivery: Delivery) -> list[run_service_pb2.WatchRunsResponse]:
        """The delivery as messages, cut between revisions when large (INITIAL events all
        share one revision and are never cut); each carries how far it got.
        """
        if not delivery.events:
            return [run_service_pb2.WatchRunsResponse(revision=delivery.revision)]
        if delivery.events[0].type is EventType.INITIAL:  # read for one stream
            return list(self._cut(delivery))
        key = (tuple(event.revision for event in delivery.events), delivery.revision)
        found = self._responses.get(key)
        if found is None:
            found = _remember(self._responses, key, list(self._cut(delivery)), self._capacity)
        return found

    def _encoded(self, event: RunEvent) -> tuple[run_pb2.RunEvent, int]:
        """The event's message and its size in bytes."""
        if event.type is EventType.INITIAL:
            message = convert.event_to_proto(event)
            return message, message.ByteSize()
        found = self._events.get(event.revision)
        if found is None:
            message = convert.event_to_proto(event)
            found = _remember(
                self._events, event.revision, (message, message.ByteSize()), self._capacity
            )
        return found

    def _cut(self, delivery: Delivery) -> Iterator[run_service_pb2.WatchRunsResponse]:
        batch: list[run_pb2.RunEvent] = []
        size = 0
        for event in delivery.events:
            message, message_size = self._encoded(event)
            if (
                batch
                and size + message_size > MAX_MESSAGE_BYTES
                and (event.type is not EventType.INITIAL)
            ):
                yield run_service_pb2.WatchRunsResponse(events=batch, revision=batch[-1].revision)
                batch, size = [], 0
            batch.append(message)
            size += message_size
        yield run_service_pb2.WatchRunsResponse(events=batch, revision=delivery.revision)


Key = TypeVar("Key")
Value = TypeVar("Value")


def _remember(cache: dict[Key, Value], key: Key, value: Value, capacity: int) -> Value:
    """Keep `value`, dropping the oldest entry when full (the recent ones are the hot ones)."""
    if len(cache) >= capacity:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    def __init__(
        self,
        runs: RunService,
        claims: ClaimService,
        watches: WatchService,
        limits: validation.Limits,
    ) -> None:
        self._runs = runs
        self._claims = claims
        self._watches = watches
        self._limits = limits
        self._event_messages = _EventMessages()

    @_rpc
    async def CreateRun(
        self, request: run_service_pb2.CreateRunRequest, access: Access
    ) -> run_pb2.Run:
        run = await self._runs.create(validation.create_run(request, self._limits, access=access))
        return convert.run_to_proto(run)

    @_rpc
    async def GetRun(self, request: run_service_pb2.GetRunRequest, access: Access) -> run_pb2.Run:
        run = await self._runs.get(validation.get_run(request, access=access))
        return convert.run_to_proto(run)

    @_rpc
    async def ListRuns(
        self, request: run_service_pb2.ListRunsRequest, access: Access
    ) -> run_service_pb2.ListRunsResponse:
        page = await self._runs.list(validation.list_runs(request, self._limits, access=access))
        return run_service_pb2.ListRunsResponse(
            runs=[convert.run_to_proto(run) for run in page.runs],
            next_page_token=page.next_page_token,
            revision=page.revision,
        )

    @_rpc
    async def UpdateRun(
        self, request: run_service_pb2.UpdateRunRequest, access: Access
    ) -> run_pb2.Run:
        run = await self._runs.update(validation.update_run(request, self._limits, access=access))
        return convert.run_to_proto(run)

    @_rpc
    async def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, access: Access
    ) -> run_pb2.Run:
        run = await self._runs.cancel(validation.cancel_run(request, access=access))
        return convert.run_to_proto(run)

    @_rpc
    async def DeleteRun(
        self, request: run_service_pb2.DeleteRunRequest, access: Access
    ) -> empty_pb2.Empty:
        await self._runs.delete(validation.delete_run(request, access=access))
        return empty_pb2.Empty()

    @_rpc
    async def ClaimRun(
        self, request: run_service_pb2.ClaimRunRequest, access: Access
    ) -> run_service_pb2.ClaimRunResponse:
        run = await self._claims.claim(validation.claim_run(request, access=access))
        if run is None:
            return run_service_pb2.ClaimRunResponse()
        return run_service_pb2.ClaimRunResponse(run=convert.run_to_proto(run))

    @_rpc
    async def HeartbeatRun(
        self, request: run_service_pb2.HeartbeatRunRequest, access: Access
    ) -> run_pb2.Run:
        run = await self._claims.heartbeat(validation.heartbeat_run(request, access=access))
        return convert.run_to_proto(run)

    @_rpc
    async def CompleteRun(
        self, request: run_service_pb2.CompleteRunRequest, access: Access
    ) -> run_pb2.Run:
        run = await self._claims.complete(
            validation.complete_run(request, self._limits, access=access)
        )
        return convert.run_to_proto(run)

    @_watch
    async def WatchRuns(
        self, request: run_service_pb2.WatchRunsRequest, access: Access
    ) -> AsyncIterator[Delivery]:
        return await self._watches.watch_runs(
            validation.watch_runs(request, self._limits, access=access)
        )

    @_watch
    async def WatchRun(
        self, request: run_service_pb2.WatchRunRequest, access: Access
    ) -> AsyncIterator[Delivery]:
        return await self._watches.watch_run(validation.watch_run(request, access=access))

    async def CancelRuns(
        self, request: run_service_pb2.CancelRunsRequest, context: Context
    ) -> run_service_pb2.CancelRunsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "CancelRuns is not served yet")
        raise AssertionError("ServicerContext.abort returns by raising")

    async def GetStats(
        self, request: run_service_pb2.GetStatsRequest, context: Context
    ) -> run_service_pb2.GetStatsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetStats is not served yet")
        raise AssertionError("ServicerContext.abort returns by raising")
