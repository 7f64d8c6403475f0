"""CancelRuns benchmark: how long one bulk cancel takes, and how long other writes wait
behind it, against a running server.

    python -m tests.bench.cancel_runs --address HOST:PORT [--runs 5000] [--threads 5000]

Creates `--runs` PENDING runs of a fresh assistant on `--threads` threads, then cancels
them all with one CancelRuns while another caller creates a run every 10 ms. Reported:
the cancel's duration and count, and the slowest of those creates (the write stall the
cancel causes: one transaction holds the writer). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import grpc

from runplane.v1 import run_service_pb2, run_service_pb2_grpc

CREATORS = 32
"""Concurrent creates while the runs are set up."""


async def measure(address: str, runs: int, threads: int) -> dict[str, object]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        assistant = f"bench-cancel-{uuid.uuid4()}"
        thread_ids = [str(uuid.uuid4()) for _ in range(threads)]
        gate = asyncio.Semaphore(CREATORS)

        async def create(index: int) -> None:
            request = run_service_pb2.CreateRunRequest(
                assistant_id=assistant, thread_id=thread_ids[index % threads]
            )
            async with gate:
                await stub.CreateRun(request)

        await asyncio.gather(*(create(index) for index in range(runs)))

        done = asyncio.Event()
        stalls: list[float] = []

        async def other_writes() -> None:
            request = run_service_pb2.CreateRunRequest(assistant_id=f"{assistant}-other")
            while not done.is_set():
                started = time.perf_counter()
                await stub.CreateRun(request)
                stalls.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

        writer = asyncio.create_task(other_writes())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        response = await stub.CancelRuns(
            run_service_pb2.CancelRunsRequest(
                filter=run_service_pb2.RunFilter(assistant_id=assistant)
            ),
            timeout=120,
        )
        elapsed = time.perf_counter() - started
        done.set()
        await writer
    return {
        "runs": runs,
        "threads": threads,
        "cancelled": response.count,
        "cancel_ms": round(elapsed * 1000, 1),
        "slowest_concurrent_create_ms": round(max(stalls) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=5000)
    options = parser.parse_args()
    print(json.dumps(asyncio.run(measure(options.address, options.runs, options.threads))))


if __name__ == "__main__":
    main()
