"""A traced application in a process of its own: it configures the OpenTelemetry SDK to
export over OTLP, then calls runplane through the bundled clients, and creates a run that
an `AsyncWorker` claims and works, all inside one span of its own. Prints the ids the
test checks, as JSON.

    python -m tests.support.traced_calls ADDRESS OTLP_ENDPOINT

The server keeps the context of the CreateRun call with the run (`Run.trace_context`),
and the worker works the run in it: its handler's span is a child of that call's span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from runplane.client import AsyncClient, AsyncWorker, Client, NotFound, Run


def _current_trace_id() -> str:
    return trace.format_trace_id(trace.get_current_span().get_span_context().trace_id)


async def _handler(run: Run) -> dict[str, Any]:
    return {"handled_in_trace": _current_trace_id()}


async def _asynchronously(address: str) -> dict[str, Any]:
    async with AsyncClient(address) as client:
        await client.create_run("traced-async")
        created = await client.create_run("worked")
        worker = AsyncWorker(client, _handler, assistant_ids=["worked"], worker_id="worker")
        ended = await worker.run_once()  # claims the run, then works it
        assert ended is not None
        assert ended.run_id == created.run_id
        return {
            **ended.result,
            "worked_traceparent": created.trace_context["traceparent"],
            "kept_traceparent": ended.trace_context["traceparent"],
        }


def main(address: str, endpoint: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "traced-app"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    with trace.get_tracer("traced-app").start_as_current_span("app") as app:
        with Client(address) as client:
            created = client.create_run("traced")
            with contextlib.suppress(NotFound):
                client.get_run(str(uuid.uuid4()))
            for _ in client.watch_run(created.run_id):
                break
        result = asyncio.run(_asynchronously(address))
    provider.shutdown()
    context = app.get_span_context()
    print(
        json.dumps(
            {
                "app_trace_id": trace.format_trace_id(context.trace_id),
                "app_span_id": trace.format_span_id(context.span_id),
                "handled_in_trace": result["handled_in_trace"],
                "worked_traceparent": result["worked_traceparent"],
                "kept_traceparent": result["kept_traceparent"],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
