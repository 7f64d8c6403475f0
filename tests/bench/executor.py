"""Executor benchmarks, run in their own process against a running server:

    python -m tests.bench.executor --address HOST:PORT --mode create-to-claim --runs N
    python -m tests.bench.executor --address HOST:PORT --mode end-to-end --clients C

create-to-claim: a worker long-polls ClaimRun while runs are created one at a time,
paced so the worker is always waiting; the latency of a run is from sending its
CreateRun to the worker's ClaimRun returning it. It measures how fast a waiting
worker wakes, not how long a queue is. With `--backlog N` (and `--database-url`), N
PENDING runs of 20 other assistants in every priority, each a thread head, are
written through the store first: the worker's claims must not slow down for them.
With `--server-pid`, the server's CPU per run (create, claims, complete) is reported
too: on a shared machine it holds still where latency does not.

end-to-end: C clients each create a run and wait for it with the client's wait_run
(a WatchRun stream), over and over, while long-polling workers claim and complete;
throughput is finished runs per second. Each mode prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import grpc

from runplane.client import AsyncClient, RunStatus
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.bench import backlog
from tests.bench.load import process_cpu_s
from tests.support import stubs

PACE_S = 0.02


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def create_to_claim(address: str, runs: int, server_pid: int | None) -> dict[str, object]:
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
            worker_id="bench-worker", assistant_ids=[assistant], wait=stubs.seconds(10)
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
        cpu_before = None if server_pid is None else process_cpu_s(server_pid)
        for _ in range(runs):
            started = time.perf_counter()
            run = await creator.CreateRun(
                run_service_pb2.CreateRunRequest(assistant_id=assistant), timeout=10
            )
            sent[run.run_id] = started
            await asyncio.sleep(PACE_S)
        await asyncio.wait_for(working, 30)
        cpu_after = None if server_pid is None else process_cpu_s(server_pid)
    latencies = [(claimed[run_id] - sent[run_id]) * 1000 for run_id in sent]
    return {
        "scenario": "create_to_claim",
        "runs": runs,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "max_ms": round(max(latencies), 3),
        "server_cpu_us_per_run": (
            None
            if cpu_before is None or cpu_after is None
            else round(1e6 * (cpu_after - cpu_before) / runs, 1)
        ),
    }


async def end_to_end(address: str, clients: int, seconds: float, workers: int) -> dict[str, object]:
    """Clients create a run on a new thread and wait for it (wait_run) while long-polling
    workers claim and complete: each latency covers create, claim, complete and the watch."""
    assistant = f"bench-e2e-{uuid.uuid4()}"
    latencies: list[float] = []
    stopping = asyncio.Event()

    async def worker(stub: run_service_pb2_grpc.RunServiceAsyncStub, name: str) -> None:
        claim = run_service_pb2.ClaimRunRequest(
            worker_id=name, assistant_ids=[assistant], wait=stubs.seconds(1)
        )
        while not stopping.is_set():
            response = await stub.ClaimRun(claim, timeout=10)
            if response.HasField("run"):
                await stub.CompleteRun(
                    run_service_pb2.CompleteRunRequest(
                        run_id=response.run.run_id,
                        worker_id=name,
                        status=run_pb2.RUN_STATUS_SUCCESS,
                    ),
                    timeout=10,
                )

    async def client_loop(client: AsyncClient, until: float) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            run = await client.create_run(assistant)
            ended = await client.wait_run(run.run_id, timeout=30)
            assert ended.status is RunStatus.SUCCESS
            latencies.append((time.perf_counter() - started) * 1000)

    async with (
        grpc.aio.insecure_channel(address) as worker_channel,
        AsyncClient(address) as client,
    ):
        stub = run_service_pb2_grpc.RunServiceStub(worker_channel)
        working = [asyncio.ensure_future(worker(stub, f"bench-worker-{i}")) for i in range(workers)]
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client, began + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - began
        stopping.set()
        await asyncio.gather(*working)
    return {
        "scenario": "end_to_end",
        "clients": clients,
        "workers": workers,
        "runs": len(latencies),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
    }


def wait_until_idle(pid: int, timeout_s: float = 60.0) -> None:
    """Until the server spends under a tenth of a core for half a second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = process_cpu_s(pid)
        time.sleep(0.5)
        after = process_cpu_s(pid)
        if before is None or after is None or after - before < 0.05:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument(
        "--mode", choices=["create-to-claim", "end-to-end"], default="create-to-claim"
    )
    parser.add_argument("--runs", type=int, default=300, help="create-to-claim: runs created")
    parser.add_argument("--clients", type=int, default=1, help="end-to-end: concurrent clients")
    parser.add_argument("--workers", type=int, default=4, help="end-to-end: long-polling workers")
    parser.add_argument("--seconds", type=float, default=5.0, help="end-to-end: duration")
    parser.add_argument("--server-pid", type=int, default=None, help="report its CPU per run")
    parser.add_argument("--backlog", type=int, default=0, help="create-to-claim: runs queued")
    parser.add_argument("--database-url", default=None, help="where --backlog is written")
    args = parser.parse_args()
    if args.mode == "create-to-claim":
        if args.backlog:
            if args.database_url is None:
                parser.error("--backlog needs --database-url")
            backlog.load(args.database_url, backlog.pending_backlog(args.backlog))
            if args.server_pid is not None:
                # The server's watch hub reads the backlog's events from the log.
                wait_until_idle(args.server_pid)
        result = asyncio.run(create_to_claim(args.address, args.runs, args.server_pid))
        result["backlog"] = args.backlog
    else:
        result = asyncio.run(end_to_end(args.address, args.clients, args.seconds, args.workers))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
