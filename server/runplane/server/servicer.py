"""RunService over gRPC: decode and validate the request into its `requests` dataclass,
with the call's `Access` (made once, by `_rpc` or `_watch`, from the caller the guard
admitted), call the rules with it, convert the answer.

This is the only module that knows gRPC status codes; every error leaves through
`_rpc` (or `_watch` for streams), which maps it with `status`. That includes requests
that do not decode: `add_to_server` registers decoders that never raise (grpc would
answer UNKNOWN), and `_rpc` turns what they could not decode into INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, message_factory
from google.protobuf.message import DecodeError, Message

from runplane.server import convert, identity, status, validation
from runplane.server.access import Access
from runplane.server.cache import SizedCache
from runplane.server.claims import ClaimService
from runplane.server.errors import FieldViolation, InvalidInput, RunplaneError, ServerShuttingDown
from runplane.server.records import EventType, Run, RunEvent
from runplane.server.runs import RunService
from runplane.server.stats import StatsService
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

SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]

_undecodable: contextvars.ContextVar[InvalidInput | None] = contextvars.ContextVar(
    "runplane_undecodable", default=None
)
"""Why this call's request did not decode. grpc decodes in the call's own task, before
interceptors and the handler run: they get an empty request, and `_rpc` this error."""

_call: contextvars.ContextVar[Context] = contextvars.ContextVar("runplane_call")
"""The context of the unary call being handled, for a handler that reads its metadata."""


def _caller_trace_context() -> dict[str, str]:
    """The W3C trace context the caller of this call sent in its metadata, if any."""
    metadata = dict(_call.get().invocation_metadata() or ())
    return validation.trace_context(metadata.get("traceparent"), metadata.get("tracestate"))


def _decoder(message_class: type[Message]) -> Callable[[bytes], Message]:
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Message:
        try:
            return parse(data)
        except DecodeError as error:
            # upb says what was wrong after the type's name ("...: String field had bad
            # UTF-8"); none of the request is quoted.
            why = str(error).rpartition("': ")[2] or "malformed"
            _undecodable.set(
                InvalidInput([FieldViolation("request", f"is not a valid {name} message: {why}")])
            )
            return message_class()

    return decode


def add_to_server(servicer: RunServicer, server: grpc.aio.Server) -> None:
    """Serve `servicer` as runplane.v1.RunService, as the generated
    `add_RunServiceServicer_to_server` does, with decoders that never raise."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        handler = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = handler(
            getattr(servicer, method.name),
            request_deserializer=_decoder(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    # As the generated code does: grpc then finds the handlers without a lookup per call.
    server.add_registered_method_handlers(  # type: ignore[attr-defined]  # not in grpc-stubs
        SERVICE.full_name, handlers
    )


def _failure_status(error: Exception) -> grpc.Status:
    if isinstance(error, RunplaneError):
        return status.from_error(error)
    incident = uuid.uuid4().hex[:12]
    # Where it failed, not what it said: an exception's text may carry SQL or the
    # request's values, which no log line may hold.
    frames = traceback.extract_tb(error.__traceback__)[-4:]
    log.error(
        "unexpected failure",
        extra={
            "incident": incident,
            "error": type(error).__name__,
            "cause": type(error.__cause__).__name__ if error.__cause__ else "",
            "at": " < ".join(
                f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" for frame in reversed(frames)
            ),
        },
    )
    return status.internal(incident)


class Calls:
    """The unary calls in flight, and whether the server drains: new calls are then
    refused with UNAVAILABLE (retryable) while those in flight finish."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_call = 0.0

    def begin(self) -> None:
        """A unary call starts (ServerShuttingDown while draining); `end` when it ends."""
        self.refuse_if_draining("retry the call")
        self._in_flight += 1
        self._idle.clear()

    def end(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    def drain(self) -> None:
        self.draining = True
        self._last_call = time.monotonic()  # calls grpc has queued are yet to come

    def refuse_if_draining(self, then: str) -> None:
        if self.draining:
            self._last_call = time.monotonic()
            raise ServerShuttingDown(then)

    async def settled(self, quiet: float) -> None:
        """When no call is in flight and none came for `quiet` seconds: grpc then stops
        with nothing in its queue. (A call it has queued but not yet handed to the
        server when it stops ends CANCELLED, which clients do not retry; refused, the
        same call ends UNAVAILABLE.)"""
        while True:
            await self._idle.wait()
            pause = self._last_call + quiet - time.monotonic()
            if pause <= 0 and self._idle.is_set():
                return
            await asyncio.sleep(max(pause, 0.01))


def _rpc(handler: Rules[Request, Response]) -> Handler[Request, Response]:
    """Give the handler the call's access; map the domain's errors to their statuses,
    and anything else to INTERNAL."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: RunServicer, request: Request, context: Context) -> Response:
        calls = self.calls
        try:
            calls.begin()
            try:
                if (undecodable := _undecodable.get()) is not None:
                    raise undecodable
                access = Access.of(identity.caller(), method, request)
                _call.set(context)
                return await handler(self, request, access)
            finally:
                calls.end()
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
            self.calls.refuse_if_draining("resume the watch from the last revision")
            if (undecodable := _undecodable.get()) is not None:
                raise undecodable
            access = Access.of(identity.caller(), method, request)
            deliveries = await opener(self, request, access)
            # Headers now rather than with the first message, which may be a while
            # coming: they tell the client the watch is open, so it resumes it after a
            # drop instead of failing as it does when the server cannot be reached.
            await context.send_initial_metadata(WATCH_OPEN_METADATA)
            messages = self._event_messages
            async for delivery in deliveries:
                if delivery.events and delivery.events[0].type is EventType.INITIAL:
                    async for response in messages.initial(delivery):
                        yield response
                else:
                    for response in messages.responses(delivery):
                        yield response
            return
        except Exception as error:
            rich = _failure_status(error)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)

    return handler


MAX_MESSAGE_BYTES = 1 << 20
"""Responses are cut into messages of about this size, well under the 4 MiB that gRPC
clients accept by default: a page of ListRuns, a delivery of a watch, an initial
state. A single run may be larger (three structs of --max-struct-bytes, at most
1 MiB each): it then goes alone, still under 4 MiB."""
CACHE_BYTES = 64 << 20
"""What the watch messages kept for reuse may add up to."""
_CONVERT_SLICE = 64
"""INITIAL events converted between two looks at the event loop's other work."""

WatchKey = tuple[tuple[int, ...], int]


class EventMessages:
    """Watch messages built once for all the streams that send them.

    Live streams of one filter get the very same deliveries, so whole responses are
    kept (by the revisions they carry) as well as each event's message: a change
    seen by a thousand streams is converted once, and only serialized per stream.
    """

    def __init__(self, capacity: int = 8192, max_bytes: int = CACHE_BYTES) -> None:
        # Half the bytes each: a response holds copies of its events' messages.
        self._events: SizedCache[int, tuple[run_pb2.RunEvent, int]] = SizedCache(
            capacity, max_bytes // 2
        )
        self._responses: SizedCache[WatchKey, list[run_service_pb2.WatchRunsResponse]] = SizedCache(
            capacity, max_bytes // 2
        )

    @property
    def bytes(self) -> int:
        return self._events.bytes + self._responses.bytes

    def responses(self, delivery: Delivery) -> list[run_service_pb2.WatchRunsResponse]:
        """The delivery (of changes) as messages, cut between revisions when large; each
        carries how far it got."""
        if not delivery.events:
            return [run_service_pb2.WatchRunsResponse(revision=delivery.revision)]
        key = (tuple(event.revision for event in delivery.events), delivery.revision)
        found = self._responses.get(key)
        if found is None:
            found = []
            size = 0
            encoded = (self._encoded(event) for event in delivery.events)
            for response, response_size in _batched(encoded, delivery.revision):
                found.append(response)
                size += response_size
            self._responses.put(key, found, size)
        return found

    async def initial(self, delivery: Delivery) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
        """An initial state (INITIAL events, all at the revision R it was read at) as
        messages under the size limit, each at R; the stream's next message, a bookmark at
        R, says it is complete. Converted a slice at a time, so that other calls are
        served meanwhile, and never kept: no other stream sends the same."""
        encoded = []
        for index, event in enumerate(delivery.events):
            if index and not index % _CONVERT_SLICE:
                await asyncio.sleep(0)
            message = convert.event_to_proto(event)
            encoded.append((message, message.ByteSize()))
        for response, _ in _batched(encoded, delivery.revision):
            yield response

    def _encoded(self, event: RunEvent) -> tuple[run_pb2.RunEvent, int]:
        """The event's message and its size in bytes."""
        found = self._events.get(event.revision)
        if found is None:
            message = convert.event_to_proto(event)
            found = (message, message.ByteSize())
            self._events.put(event.revision, found, found[1])
        return found


class RunMessages:
    """GetRun's messages, built once for each run the caches hand out.

    A run cache answers with the very same `Run` while the run stays as it is, and
    with another object once it changed; converting its documents to Structs is most of
    what GetRun costs runplane's own code. So a message is kept for the object it was
    made from (held, so that its id is not reused) and sent again while the cache
    answers with that object.
    """

    def __init__(self, capacity: int = 4096, max_bytes: int = CACHE_BYTES) -> None:
        self._messages: SizedCache[int, tuple[Run, run_pb2.Run]] = SizedCache(capacity, max_bytes)

    def message(self, run: Run) -> run_pb2.Run:
        found = self._messages.get(id(run))
        if found is not None and found[0] is run:
            return found[1]
        message = convert.run_to_proto(run)
        self._messages.put(id(run), (run, message), message.ByteSize())
        return message


def _batched(
    encoded: Iterable[tuple[run_pb2.RunEvent, int]], revision: int
) -> Iterator[tuple[run_service_pb2.WatchRunsResponse, int]]:
    """Events (with their sizes) as messages of at most MAX_MESSAGE_BYTES unless one
    event alone is larger, and the size of each; every message but the last carries
    its last event's revision (events of one revision are never apart but INITIAL
    events, which all carry the state's), the last one `revision`."""
    batch: list[run_pb2.RunEvent] = []
    size = 0
    for message, message_size in encoded:
        if batch and size + message_size > MAX_MESSAGE_BYTES:
            yield run_service_pb2.WatchRunsResponse(events=batch, revision=batch[-1].revision), size
            batch, size = [], 0
        batch.append(message)
        size += message_size
    yield run_service_pb2.WatchRunsResponse(events=batch, revision=revision), size


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    def __init__(
        self,
        runs: RunService,
        claims: ClaimService,
        watches: WatchService,
        stats: StatsService,
        limits: validation.Limits,
    ) -> None:
        self._runs = runs
        self._claims = claims
        self._watches = watches
        self._stats = stats
        self._limits = limits
        self._event_messages = EventMessages()
        self._run_messages = RunMessages()
        self.calls = Calls()

    def drain(self) -> None:
        """The server is stopping: refuse new calls, and end waiting claims now."""
        self.calls.drain()
        self._claims.drain()

    @_rpc
    async def CreateRun(
        self, request: run_service_pb2.CreateRunRequest, access: Access
    ) -> run_pb2.Run:
        new = validation.create_run(
            request, self._limits, access=access, trace_context=_caller_trace_context()
        )
        run = await self._runs.create(new)
        return convert.run_to_proto(run)

    @_rpc
    async def GetRun(self, request: run_service_pb2.GetRunRequest, access: Access) -> run_pb2.Run:
        run = await self._runs.get(validation.get_run(request, access=access))
        return self._run_messages.message(run)

    @_rpc
    async def ListRuns(
        self, request: run_service_pb2.ListRunsRequest, access: Access
    ) -> run_service_pb2.ListRunsResponse:
        page = await self._runs.list(validation.list_runs(request, self._limits, access=access))
        runs: list[run_pb2.Run] = []
        next_page_token = page.next_page_token
        size = 0
        for run in page.runs:
            message = convert.run_to_proto(run)
            size += message.ByteSize()
            if runs and size > MAX_MESSAGE_BYTES:
                # Too large for one response: the rest is the next page.
                next_page_token = page.resume(page.runs[len(runs) - 1])
                break
            runs.append(message)
        return run_service_pb2.ListRunsResponse(
            runs=runs, next_page_token=next_page_token, revision=page.revision
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
    async def CancelRuns(
        self, request: run_service_pb2.CancelRunsRequest, access: Access
    ) -> run_service_pb2.CancelRunsResponse:
        done = await self._runs.cancel_many(
            validation.cancel_runs(request, self._limits, access=access)
        )
        return run_service_pb2.CancelRunsResponse(count=done.count, revision=done.revision)

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

    @_rpc
    async def GetStats(
        self, request: run_service_pb2.GetStatsRequest, access: Access
    ) -> run_service_pb2.GetStatsResponse:
        stats = await self._stats.get(validation.get_stats(request, access=access))
        return convert.stats_to_proto(stats)
