"""What an interceptor adds to each call, in microseconds, without the network's noise.

    python -m tests.bench.interceptors [--calls 100000]

Each variant resolves a GetRun handler through its interceptors the way grpc.aio does (one
awaited `intercept_service` per interceptor and call) and runs it against a stand-in
servicer context; the handler itself returns at once. The figures are the best of three
passes. With opentelemetry-instrumentation-grpc installed (not a dependency of runplane),
its aio server interceptor is measured too, for comparison with the call observer's own
server spans.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from runplane.server.telemetry.calls import CallObserver
from runplane.server.telemetry.metrics import Metrics

METHOD = "/runplane.v1.RunService/GetRun"


class _Metadatum(NamedTuple):
    key: str
    value: str


class _Context:
    """What the wrappers ask of a servicer context, answered at once."""

    def code(self) -> None:
        return None

    def time_remaining(self) -> float:
        return 5.0

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> tuple[_Metadatum, ...]:
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        return (_Metadatum("user-agent", "grpc-python"), _Metadatum("traceparent", traceparent))


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[Any, ...]


class _Passthrough(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


class _Rewrapping(CallObserver):
    """The call observer without its cache: a new wrapper for every call."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return self._wrap(details.method, await continuation(details))


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _behavior(request: object, context: object) -> object:
    return request


_HANDLER = grpc.unary_unary_rpc_method_handler(_behavior)


async def _resolve(interceptors: Sequence[Any], details: _Details) -> Any:
    remaining = iter(interceptors)

    async def step(details: _Details) -> Any:
        interceptor = next(remaining, None)
        if interceptor is None:
            return _HANDLER
        return await interceptor.intercept_service(step, details)

    return await step(details)


async def _per_call_us(interceptors: Sequence[Any], calls: int) -> float:
    context, details = _Context(), _Details(METHOD, ())
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            handler = await _resolve(interceptors, details)
            await handler.unary_unary(b"", context)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def _variants() -> dict[str, Callable[[], Sequence[Any]]]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=1 << 20))
    tracer = provider.get_tracer("bench")
    variants: dict[str, Callable[[], Sequence[Any]]] = {
        "no interceptor": list,
        "pass-through interceptor": lambda: [_Passthrough()],
        "call observer: metrics": lambda: [CallObserver(metrics=Metrics())],
        "call observer: metrics, wrapped per call": lambda: [_Rewrapping(metrics=Metrics())],
        "call observer: server spans": lambda: [CallObserver(tracer=tracer)],
    }
    try:
        instrumentation = importlib.import_module("opentelemetry.instrumentation.grpc")
    except ImportError:
        return variants
    variants["opentelemetry-instrumentation-grpc aio interceptor"] = lambda: [
        instrumentation.aio_server_interceptor(tracer_provider=provider)
    ]
    return variants


async def _main(calls: int) -> None:
    results: dict[str, float] = {}
    for name, make in _variants().items():
        results[name] = await _per_call_us(make(), calls)
    bare = results["no interceptor"]
    for name, micros in results.items():
        print(f"{name:52} {micros:6.2f} us/call  (+{micros - bare:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    asyncio.run(_main(parser.parse_args().calls))


if __name__ == "__main__":
    main()
