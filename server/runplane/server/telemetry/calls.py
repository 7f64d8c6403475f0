"""One interceptor for everything said about each RPC: the grpc_server_* series, a server
span that continues the caller's trace, and an access log line.

grpc.aio asks the interceptors for a handler on every call. This one wraps each method's
handler the first time it sees it and hands out the same wrapper afterwards: a call pays a
dictionary lookup, not a new handler. The wrapper learns how a call ended from the
servicer context, so a status set by `context.abort` (every error of the RunService, and
the UNAVAILABLE that ends watches at shutdown) is counted with its real code.

It must come first among the interceptors: calls that later ones refuse (authentication)
are then counted, traced and logged too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from runplane.server.telemetry.metrics import Metrics, RpcSeries
from runplane.v1 import run_service_pb2

Context = grpc.aio.ServicerContext[Any, Any]
Principal = Callable[[Context], str]
"""Who made a call, for the access log."""

access_log = logging.getLogger("runplane.access")

_RPC_TYPES = {
    (False, False): ("unary", "unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("server_stream", "unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("client_stream", "stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("bidi_stream", "stream_stream", grpc.stream_stream_rpc_method_handler),
}

_RUN_SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
WATCH_METHODS = frozenset(
    f"/{_RUN_SERVICE.full_name}/{method.name}"
    for method in _RUN_SERVICE.methods
    if method.output_type.name == "WatchRunsResponse"
)
"""Methods whose messages carry run events (`runplane_watch_events_sent_total`)."""

# The codes OpenTelemetry's RPC conventions count as a server's own failure.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def anonymous(context: Context) -> str:
    """The principal of every call while authentication is off."""
    return "anonymous"


def _ended_with(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with, given what its handler raised (None: it returned)."""
    code: grpc.StatusCode | None = context.code()
    if code is not None and (error is None or code is not grpc.StatusCode.OK):
        return code  # set by abort(), or by set_code()
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # The client went away, or the deadline passed and gRPC cancelled the handler.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for any other exception


class CallObserver(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        log_calls: bool = False,
        principal: Principal = anonymous,
    ) -> None:
        self._metrics = metrics
        self._tracer = tracer
        self._log_calls = log_calls
        self._principal = principal
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: Any) -> Any:
        key = (handler.request_streaming, handler.response_streaming)
        grpc_type, attribute, make_handler = _RPC_TYPES[key]
        behavior = getattr(handler, attribute)
        observed = _ObservedMethod(
            full_method,
            grpc_type,
            metrics=self._metrics,
            tracer=self._tracer,
            log_calls=self._log_calls,
            principal=self._principal,
        )
        if inspect.isasyncgenfunction(behavior):
            wrapped = observed.stream(behavior, counts_requests=key[0])
        elif inspect.iscoroutinefunction(behavior):
            # Unary, or a stream written with context.write(): its messages go uncounted.
            wrapped = observed.unary(behavior, counts_requests=key[0])
        else:
            return handler  # a synchronous handler: runplane serves none
        return make_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _ObservedMethod:
    """What is said about the calls of one method, and the wrappers that say it."""

    def __init__(
        self,
        full_method: str,
        grpc_type: str,
        *,
        metrics: Metrics | None,
        tracer: Tracer | None,
        log_calls: bool,
        principal: Principal,
    ) -> None:
        self._full_method = full_method
        self._series: RpcSeries | None = None
        self._events: Any = None
        if metrics is not None:
            self._series = metrics.rpc(full_method, grpc_type)
            if full_method in WATCH_METHODS:
                self._events = metrics.watch_events_sent
        self._tracer = tracer
        self._log_calls = log_calls
        self._principal = principal
        service, _, method = full_method.lstrip("/").partition("/")
        self._span_name = f"{service}/{method}"
        self._span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    # -- the wrappers -------------------------------------------------------------------------

    def unary(
        self, behavior: Callable[[Any, Context], Any], *, counts_requests: bool
    ) -> Callable[[Any, Context], Any]:
        async def observed(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            span = self._begin(context, current=True, one_request=not counts_requests)
            if counts_requests:
                request = self._counted(request)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                self._end(context, started, _ended_with(context, error), span, timed=False)
                raise
            code = _ended_with(context, None)
            if code is grpc.StatusCode.OK and self._series is not None:
                self._series.sent.inc()
            self._end(context, started, code, span, timed=False)
            return response

        return observed

    def stream(
        self,
        behavior: Callable[[Any, Context], AsyncGenerator[Any, None]],
        *,
        counts_requests: bool,
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        series, events = self._series, self._events

        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            # Not made current: the generator may be closed from another task's context.
            span = self._begin(context, current=False, one_request=not counts_requests)
            if counts_requests:
                request = self._counted(request)
            timed = False
            error: BaseException | None = None
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        if series is not None:
                            if not timed:
                                series.latency.observe(time.perf_counter() - started)
                                timed = True
                            series.sent.inc()
                            if events is not None:
                                events.inc(len(response.events))
                        yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                self._end(context, started, _ended_with(context, error), span, timed=timed)

        return observed

    async def _counted(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if self._series is not None:
                self._series.received.inc()
            yield request

    # -- the start and the end of a call ------------------------------------------------------

    def _begin(self, context: Context, *, current: bool, one_request: bool) -> _Span | None:
        """Count the call (and its one request, unless requests stream in: those are
        counted as they come), and start its span."""
        series = self._series
        if series is not None:
            series.started.inc()
            if one_request:
                series.received.inc()
        if self._tracer is None:
            return None
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        span = self._tracer.start_span(
            self._span_name, parent, kind=SpanKind.SERVER, attributes=self._span_attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent)) if current else None
        return _Span(span, token)

    def _end(
        self,
        context: Context,
        started: float,
        code: grpc.StatusCode,
        span: _Span | None,
        *,
        timed: bool,
    ) -> None:
        elapsed = time.perf_counter() - started
        series = self._series
        if series is not None:
            if not timed:
                series.latency.observe(elapsed)
            series.handled(code)
        if span is not None:
            span.end(code)
        if self._log_calls:
            fields = {
                "method": self._full_method,
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 3),
                "peer": context.peer(),
                "principal": self._principal(context),
            }
            if span is not None:
                fields["trace_id"] = trace.format_trace_id(span.span.get_span_context().trace_id)
            access_log.info("rpc", extra=fields)


class _Span:
    """A call's server span, and the token that made it current, if it is."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object | None) -> None:
        self.span = span
        self.token = token

    def end(self, code: grpc.StatusCode) -> None:
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            self.span.set_status(Status(StatusCode.ERROR, code.name))
        self.span.end()
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
