"""A real OTLP/gRPC trace receiver on 127.0.0.1:0: the collector's TraceService, from the
opentelemetry-proto stubs, keeping every span it is sent.

Tests point `runplane serve --otlp-endpoint` (and the client's SDK exporter) at it and
read back what arrived; the benchmark uses it as a sink, so tracing costs what exporting
to a collector costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    """The exporting process's service.name."""
    name: str
    kind: int
    """The OTLP Span.SpanKind number (SERVER 2, CLIENT 3, CONSUMER 5)."""
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    status_code: int
    """OTLP Status.StatusCode: UNSET 0, OK 1, ERROR 2."""


def _value(any_value: object) -> object:
    kind = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                spans.extend(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                    )
                    for span in scope_spans.spans
                )
        self._receiver.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self, *, keep: bool = True) -> None:
        """`keep=False` makes a sink that only counts what it receives."""
        self._keep = keep
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.received = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service = _TraceService(self)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server.start()

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.received += len(spans)
            if self._keep:
                self._spans.extend(spans)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 20
    ) -> list[ReceivedSpan]:
        """The spans received, once `found` holds of them (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while not found(spans := self.spans):
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never arrived; received: {spans}")
            time.sleep(0.05)
        return spans

    def close(self) -> None:
        self._server.stop(0).wait()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
