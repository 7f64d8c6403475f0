"""A traced application in a process of its own: it configures the OpenTelemetry SDK to
export over OTLP, then calls runplane through the bundled clients and works a run with
`AsyncWorker`, all inside one span of its own. Prints the ids the test checks, as JSON.

    python -m tests.support.traced_calls ADDRESS OTLP_ENDPOINT

The worked run carries a creator's trace context (CREATOR_TRACEPARENT), as runs will once
the server keeps the context of the CreateRun call that made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

CREATOR_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CREATOR_SPAN_ID = "00f067aa0ba902b7"
CREATOR_TRACEPARENT = f"00-{CREATOR_TRACE_ID}-{CREATOR_SPAN_ID}-01"


def _current_trace_id() -> str:
    return trace.format_trace_id(trace.get_current_span().get_span_context().trace_id)


async def _handler(run: Run) -> dict[str, Any]:
    return {"handled_in_trace": _current_trace_id()}


async def _asynchronously(address: str) -> dict[str, Any]:
    async with AsyncClient(address) as client:
        await client.create_run("traced-async")
        await client.create_run("worked")
        claimed = await client.claim_run("worker", assistant_ids=["worked"])
        assert claimed is not None
        worker = AsyncWorker(client, _handler, assistant_ids=["worked"], worker_id="worker")
        created_elsewhere = {"traceparent": CREATOR_TRACEPARENT}
        ended = await worker.work(dataclasses.replace(claimed, trace_context=created_elsewhere))
        assert ended is not None
        return ended.result


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
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
