"""Opens many WatchRuns streams at once and reports the first event each one gets.

Runs as its own process (`python -m tests.support.burst --address A --streams N`):
grpc.aio serves one event loop per process, and the test's server already has one.
Prints one JSON list on stdout: the revision of each stream's first event.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import grpc

from runplane.v1 import run_service_pb2, run_service_pb2_grpc


async def first_events(address: str, streams: int, deadline: float) -> list[int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        calls = [
            stub.WatchRuns(run_service_pb2.WatchRunsRequest(), timeout=deadline)
            for _ in range(streams)
        ]
        firsts = await asyncio.gather(*(_first_event(call) for call in calls))
        for call in calls:
            call.cancel()
    return firsts


async def _first_event(
    call: grpc.aio.UnaryStreamCall[
        run_service_pb2.WatchRunsRequest, run_service_pb2.WatchRunsResponse
    ],
) -> int:
    """The revision of the first event (after the opening bookmark), 0 if none came."""
    async for response in call:
        if response.events:
            return response.events[0].revision
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(first_events(args.address, args.streams, args.timeout))))


if __name__ == "__main__":
    main()
