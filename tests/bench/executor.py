"""Executor benchmarks, run in their own process against a running server:

    python -m tests.bench.executor --address HOST:PORT --runs N

create-to-claim: a worker long-polls ClaimRun while runs are created one at a time,
paced so the worker is always waiting; the latency of a run is from sending its
CreateRun to the worker's ClaimRun returning it. It measures how fast a waiting
worker wakes, not how long a queue is. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import grpc
from google.protobuf import duration_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

PACE_S = 0.02


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def create_to_claim(address: str, runs: int) -> dict[str, object]:
    assistant = f"bench-claim-{uuid.uuid4()}"
    sent: dict[str, float] = {}
    claimed: dict[str, float] = {}
    async with (
        grpc.aio.insecure_channel(address) as worker_channel,
        grpc.aio.insecure_channel(address) as creator_channel,
    ):
        worker = run_service_pb2_grpc.RunServiceStub(worker_channel)
        creator = run_service_pb2_grpc.RunServiceStub(creator_channel)
        claim = run_service_pb2.ClaimRunRequest(
            worker_id="bench-worker", assistant_ids=[assistant], wait=_seconds(10)
        )

        async def work() -> None:
            while len(claimed) < runs:
                response = await worker.ClaimRun(claim, timeout=20)
                if response.HasField("run"):
                    claimed[response.run.run_id] = time.perf_counter()
                    await worker.CompleteRun(
                        run_service_pb2.CompleteRunRequest(
                            run_id=response.run.run_id,
                            worker_id="bench-worker",
                            status=run_pb2.RUN_STATUS_SUCCESS,
                        ),
                        timeout=10,
                    )

        working = asyncio.ensure_future(work())
        await asyncio.sleep(0.2)  # the worker is waiting before the first create
        for _ in range(runs):
            started = time.perf_counter()
            run = await creator.CreateRun(
                run_service_pb2.CreateRunRequest(assistant_id=assistant), timeout=10
            )
            sent[run.run_id] = started
            await asyncio.sleep(PACE_S)
        await asyncio.wait_for(working, 30)
    latencies = [(claimed[run_id] - sent[run_id]) * 1000 for run_id in sent]
    return {
        "scenario": "create_to_claim",
        "runs": runs,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "max_ms": round(max(latencies), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(create_to_claim(args.address, args.runs))))


if __name__ == "__main__":
    main()
