"""Trace context on every call, through the OpenTelemetry API only.

Each unary call runs in a CLIENT span (`runplane.v1.RunService/CreateRun`...) whose W3C
context travels in the call's metadata, so the server's span joins the caller's trace.
Watches carry the caller's context without a span of their own (a stream can outlive
anything it would be part of). A worker works a run in the context the run's creator left
in `Run.trace_context`, and its handler in a span of that trace.

Applications turn tracing on by configuring an OpenTelemetry SDK. Without one the client
makes no spans (each would cost ~10 us for nothing) and still forwards a context the
application carries. The OpenTelemetry API is not a dependency of the client: an
application that traces has it installed, and without it there is no context to carry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind
except ImportError:  # the application does not use OpenTelemetry: no context to carry
    _OTEL = False
else:
    _OTEL = True

if TYPE_CHECKING:
    from runplane.client._models import Run

SERVICE = "runplane.v1.RunService"
Metadata = tuple[tuple[str, str], ...]

if _OTEL:
    _tracer = trace.get_tracer("runplane.client")
    _NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def _tracing() -> bool:
    """Whether the application set a tracer provider (an SDK) to record spans."""
    return _OTEL and not isinstance(trace.get_tracer_provider(), _NO_SDK)


def _injected() -> Metadata:
    """The current context as gRPC metadata (empty when there is none)."""
    if not _OTEL:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


@contextlib.contextmanager
def call_span(rpc: str) -> Iterator[Metadata]:
    """A CLIENT span around one unary call (its retries included); yields the metadata
    that carries it."""
    if not _tracing():
        yield _injected()
        return
    with _tracer.start_as_current_span(
        f"{SERVICE}/{rpc}",
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": rpc},
    ):
        yield _injected()


def stream_metadata() -> Metadata:
    """The caller's context for a watch stream."""
    return _injected()


@contextlib.contextmanager
def run_context(run: Run) -> Iterator[None]:
    """Make the context the run's creator left current (as is, if it left none)."""
    if not (_OTEL and run.trace_context):
        yield
        return
    token = otel_context.attach(propagate.extract(run.trace_context))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def handler_span(run: Run) -> Iterator[None]:
    """The span a worker's handler runs in (CONSUMER, in the current context)."""
    if not _tracing():
        yield
        return
    with _tracer.start_as_current_span(
        f"work {run.assistant_id}",
        kind=SpanKind.CONSUMER,
        attributes={
            "runplane.run_id": run.run_id,
            "runplane.thread_id": run.thread_id,
            "runplane.assistant_id": run.assistant_id,
            "runplane.attempt": run.attempt,
        },
    ):
        yield
