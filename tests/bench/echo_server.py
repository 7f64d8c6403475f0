"""A bare grpc.aio server for runplane.v1.RunService that stores nothing.

It is the benchmark's yardstick: GetRun and CreateRun parse the request and answer with one
prebuilt, realistically sized Run, so its figures are what grpc.aio and protobuf cost on this
machine, on the event loop `runplane serve` runs on by default. runplane is measured the same
way, and the ratio of the two is what runplane's own work (validation, SQL, revisions) costs.
WatchRuns is a bare broadcast: each stream gets an opening bookmark, then every CreateRun as
one event, through a queue per stream (no filter, no log, no bound). Every other method
answers UNIMPLEMENTED.

    python -m tests.bench.echo_server [--address 127.0.0.1:0]

Prints ``ready address=HOST:PORT`` on stderr once bound, like ``runplane serve``, and stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from runplane.server.app import run_on
from runplane.server.config import DEFAULT_EVENT_LOOP
from runplane.v1 import run_pb2, run_service_pb2
from tests.bench.payloads import realistic_run

SERVICE_NAME = "runplane.v1.RunService"


def echo_handler(run: run_pb2.Run) -> grpc.GenericRpcHandler[Any, Any]:
    """Handlers for GetRun and CreateRun that both return ``run``, and a WatchRuns that
    broadcasts every CreateRun."""
    streams: set[asyncio.Queue[run_service_pb2.WatchRunsResponse]] = set()
    revision = 0

    async def watch_runs(
        request: run_service_pb2.WatchRunsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[run_service_pb2.WatchRunsResponse]:
        queue: asyncio.Queue[run_service_pb2.WatchRunsResponse] = asyncio.Queue()
        streams.add(queue)
        try:
            yield run_service_pb2.WatchRunsResponse(revision=revision)
            while True:
                yield await queue.get()
        finally:
            streams.discard(queue)

    async def get_run(
        request: run_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> run_pb2.Run:
        return run

    async def create_run(
        request: run_service_pb2.CreateRunRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> run_pb2.Run:
        nonlocal revision
        revision += 1
        event = run_pb2.RunEvent(type=run_pb2.EVENT_TYPE_CREATED, revision=revision, run=run)
        message = run_service_pb2.WatchRunsResponse(events=[event], revision=revision)
        for queue in streams:
            queue.put_nowait(message)
        return run

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "GetRun": grpc.unary_unary_rpc_method_handler(
                get_run,
                request_deserializer=run_service_pb2.GetRunRequest.FromString,
                response_serializer=run_pb2.Run.SerializeToString,
            ),
            "CreateRun": grpc.unary_unary_rpc_method_handler(
                create_run,
                request_deserializer=run_service_pb2.CreateRunRequest.FromString,
                response_serializer=run_pb2.Run.SerializeToString,
            ),
            "WatchRuns": grpc.unary_stream_rpc_method_handler(
                watch_runs,
                request_deserializer=run_service_pb2.WatchRunsRequest.FromString,
                response_serializer=run_service_pb2.WatchRunsResponse.SerializeToString,
            ),
        },
    )


async def serve(address: str) -> None:
    """Serves until SIGTERM or SIGINT."""
    # As runplane: a burst of thousands of new streams queues instead of being refused.
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 65536)])
    server.add_generic_rpc_handlers((echo_handler(realistic_run()),))
    port = server.add_insecure_port(address)
    await server.start()
    host = address.rsplit(":", 1)[0]
    print(f"ready address={host}:{port}", file=sys.stderr, flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:0")
    run_on(DEFAULT_EVENT_LOOP, serve(parser.parse_args().address))


if __name__ == "__main__":
    main()
