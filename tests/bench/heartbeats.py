"""Heartbeat benchmark: many RUNNING runs keeping their leases alive, against a running server.

    python -m tests.bench.heartbeats --address HOST:PORT --database-url URL \\
        [--runs 10000] [--lease 10] [--per-lease 3] [--seconds 20] [--server-pid PID] \\
        [--kwargs-bytes 0]

The runs are written RUNNING through the store (`tests.bench.backlog`), held by one
worker id, then each heartbeats `--per-lease` times per lease (the Worker's schedule: a
third of the lease), spread evenly over time, for `--seconds`. Reported: the rate
achieved, latency, the runplane server's CPU and, on PostgreSQL, the CPU of the
database's backends that served it (from /proc, so on this machine only), both as a
percentage of one core. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from collections import Counter

import grpc
import psycopg
from google.protobuf import duration_pb2
from sqlalchemy.engine import make_url

from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.bench import backlog
from tests.bench.load import percentile_ms, process_cpu_s

WORKER = "bench-heartbeat-worker"
CALLERS = 256
CHANNELS = 8


def _postgres_backends(database_url: str) -> list[int]:
    """The PIDs of the backends connected to this database, the server's among them."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return []
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def _cpu_s(pids: list[int]) -> float | None:
    times = [process_cpu_s(pid) for pid in pids]
    return None if not times or None in times else sum(t for t in times if t is not None)


async def _keep_alive(
    address: str, run_ids: list[str], lease_s: float, per_lease: float, seconds: float
) -> tuple[list[int], Counter[str], float]:
    period = lease_s / per_lease
    lease = duration_pb2.Duration()
    lease.FromNanoseconds(int(lease_s * 1e9))
    requests = [
        run_service_pb2.HeartbeatRunRequest(run_id=run_id, worker_id=WORKER, lease_duration=lease)
        for run_id in run_ids
    ]
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [run_service_pb2_grpc.RunServiceStub(channel) for channel in channels]
    began = time.perf_counter()

    async def caller(mine: range) -> None:
        for cycle in itertools.count():
            for i in mine:
                due = began + cycle * period + period * i / len(requests)
                if due >= began + seconds:
                    return
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                start = time.perf_counter_ns()
                try:
                    await stubs[i % CHANNELS].HeartbeatRun(requests[i], timeout=10)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                    continue
                latencies.append(time.perf_counter_ns() - start)

    try:
        callers = min(CALLERS, len(requests))
        await asyncio.gather(*(caller(range(i, len(requests), callers)) for i in range(callers)))
    finally:
        for channel in channels:
            await channel.close(None)
    return latencies, errors, time.perf_counter() - began


def measure(
    address: str,
    database_url: str,
    *,
    runs: int,
    lease_s: float,
    per_lease: float,
    seconds: float,
    server_pid: int | None,
    kwargs_bytes: int = 0,
) -> dict[str, object]:
    # Held for an hour to start with: loading takes a while, and the leases must last.
    held = backlog.running(
        runs, f"bench-heartbeat-{uuid.uuid4()}", WORKER, 3600 * 10**6, kwargs_bytes
    )
    backlog.load(database_url, held)
    backends = _postgres_backends(database_url)
    server_before = None if server_pid is None else process_cpu_s(server_pid)
    database_before = _cpu_s(backends)
    latencies, errors, elapsed = asyncio.run(
        _keep_alive(address, [run.run_id for run in held], lease_s, per_lease, seconds)
    )
    server_after = None if server_pid is None else process_cpu_s(server_pid)
    database_after = _cpu_s(backends)
    ordered = sorted(latencies)

    def percent_of_a_core(before: float | None, after: float | None) -> float | None:
        return (
            None if before is None or after is None else round(100 * (after - before) / elapsed, 1)
        )

    return {
        "scenario": "heartbeat",
        "runs": runs,
        "kwargs_bytes": kwargs_bytes,
        "lease_s": lease_s,
        "heartbeats_per_lease": per_lease,
        "target_per_s": round(runs * per_lease / lease_s, 1),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": percentile_ms(ordered, 0.5),
        "p99_ms": percentile_ms(ordered, 0.99),
        "errors": dict(errors),
        "server_cpu_percent": percent_of_a_core(server_before, server_after),
        "server_cpu_us_per_heartbeat": (
            None
            if server_before is None or server_after is None or not latencies
            else round(1e6 * (server_after - server_before) / len(latencies), 1)
        ),
        "database_cpu_percent": percent_of_a_core(database_before, database_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--lease", type=float, default=10.0, help="seconds")
    parser.add_argument("--per-lease", type=float, default=3.0, help="heartbeats per lease")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--kwargs-bytes", type=int, default=0, help="each run's kwargs size")
    args = parser.parse_args()
    result = measure(
        args.address,
        args.database_url,
        runs=args.runs,
        lease_s=args.lease,
        per_lease=args.per_lease,
        seconds=args.seconds,
        server_pid=args.server_pid,
        kwargs_bytes=args.kwargs_bytes,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
