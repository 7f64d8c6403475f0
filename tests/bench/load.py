"""Load generator: drives one unary RPC at a fixed concurrency and reports its latency.

It runs in its own process so that its CPU use never shares an interpreter (or a GIL) with
the server it measures; the harness starts it once per cell:

    python -m tests.bench.load --address HOST:PORT --rpc get|create --concurrency N --seconds S
        [--ca-file CA.crt] [--token TOKEN]

N asyncio tasks share one grpc.aio channel and call back to back through the raw generated
stub. After a short warm-up (connection set-up, first-call caches) every call's latency is
recorded with ``time.perf_counter_ns``. Prints one JSON object on stdout. With
``--ca-file`` the channel is TLS; with ``--token`` every call carries it as a bearer token.

With ``--server-pid`` (Linux) it also reports the server's CPU over the timed window: on a
2-core machine shared with the load generator, throughput alone cannot tell a slow server
from a starved one, and CPU per call is the figure that survives a noisy neighbour.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.bench.payloads import BENCH_ASSISTANT_ID, BENCH_KWARGS, BENCH_METADATA, struct

CALL_TIMEOUT_S = 10.0
GET_POOL_SIZE = 200

Call = Callable[[], Awaitable[object]]
Metadata = tuple[tuple[str, str], ...]


def create_request() -> run_service_pb2.CreateRunRequest:
    """A run on a new thread (empty thread_id), so runs never queue behind each other."""
    return run_service_pb2.CreateRunRequest(
        assistant_id=BENCH_ASSISTANT_ID,
        metadata=struct(BENCH_METADATA),
        kwargs=struct(BENCH_KWARGS),
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
    )


async def prepare_create(
    stub: run_service_pb2_grpc.RunServiceAsyncStub, metadata: Metadata
) -> Call:
    def call() -> Awaitable[object]:
        return stub.CreateRun(create_request(), timeout=CALL_TIMEOUT_S, metadata=metadata)

    return call


async def prepare_get(stub: run_service_pb2_grpc.RunServiceAsyncStub, metadata: Metadata) -> Call:
    """Creates a pool of runs first, then reads them round-robin (no single hot row)."""
    created = await asyncio.gather(
        *(
            stub.CreateRun(create_request(), timeout=CALL_TIMEOUT_S, metadata=metadata)
            for _ in range(GET_POOL_SIZE)
        )
    )
    requests = itertools.cycle([run_service_pb2.GetRunRequest(run_id=r.run_id) for r in created])

    def call() -> Awaitable[object]:
        return stub.GetRun(next(requests), timeout=CALL_TIMEOUT_S, metadata=metadata)

    return call


PREPARERS: dict[
    str, Callable[[run_service_pb2_grpc.RunServiceAsyncStub, Metadata], Awaitable[Call]]
] = {
    "create": prepare_create,
    "get": prepare_get,
}


@dataclass
class Recorder:
    """Latencies of the successful calls, and the failed calls by status code."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def drive(call: Call, until_ns: int, recorder: Recorder | None) -> None:
    """Calls back to back until ``until_ns``; records only when given a recorder."""
    while (start := time.perf_counter_ns()) < until_ns:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            if recorder is not None:
                recorder.errors[error.code().name] += 1
            continue
        if recorder is not None:
            recorder.latencies_ns.append(time.perf_counter_ns() - start)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc; None where that is unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the parenthesised command name; utime and stime are the 12th, 13th.
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_figures(
    server_cpu_s: float | None, client_cpu_s: float, elapsed_s: float, calls: int
) -> dict[str, float | None]:
    return {
        "server_cpu_percent": (
            None if server_cpu_s is None else round(100 * server_cpu_s / elapsed_s, 1)
        ),
        "server_cpu_us_per_call": (
            None if server_cpu_s is None or not calls else round(1e6 * server_cpu_s / calls, 1)
        ),
        "client_cpu_percent": round(100 * client_cpu_s / elapsed_s, 1),
    }


def percentile_ms(sorted_ns: list[int], fraction: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return None
    rank = max(1, round(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


async def measure(
    address: str,
    rpc: str,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    server_pid: int | None,
    ca_pem: bytes | None = None,
    token: str | None = None,
) -> dict[str, object]:
    if ca_pem is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca_pem))
    metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        await channel.channel_ready()
        call = await PREPARERS[rpc](stub, metadata)

        warm_until = time.perf_counter_ns() + int(warmup * 1e9)
        await asyncio.gather(*(drive(call, warm_until, None) for _ in range(concurrency)))

        recorder = Recorder()
        server_cpu_before = None if server_pid is None else process_cpu_s(server_pid)
        client_cpu_before = time.process_time()
        started = time.perf_counter_ns()
        until = started + int(seconds * 1e9)
        await asyncio.gather(*(drive(call, until, recorder) for _ in range(concurrency)))
        elapsed_s = (time.perf_counter_ns() - started) / 1e9
        client_cpu_s = time.process_time() - client_cpu_before
        server_cpu_after = None if server_pid is None else process_cpu_s(server_pid)

    latencies = sorted(recorder.latencies_ns)
    return {
        "rpc": rpc,
        "concurrency": concurrency,
        "calls": len(latencies),
        "seconds": round(elapsed_s, 3),
        "throughput_per_s": round(len(latencies) / elapsed_s, 1),
        "p50_ms": _round(percentile_ms(latencies, 0.50)),
        "p99_ms": _round(percentile_ms(latencies, 0.99)),
        "errors": sum(recorder.errors.values()),
        "errors_by_code": dict(recorder.errors),
        **_cpu_figures(
            None
            if server_cpu_before is None or server_cpu_after is None
            else server_cpu_after - server_cpu_before,
            client_cpu_s,
            elapsed_s,
            len(latencies),
        ),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--server-pid", type=int, default=None, help="to report its CPU use")
    parser.add_argument("--rpc", choices=sorted(PREPARERS), required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--warmup", type=float, default=None, help="default: a fifth of --seconds, at most 1 s"
    )
    parser.add_argument("--ca-file", help="connect with TLS, trusting this CA")
    parser.add_argument("--token", help="send as a bearer token with every call")
    args = parser.parse_args()
    warmup = min(1.0, args.seconds / 5) if args.warmup is None else args.warmup
    result = asyncio.run(
        measure(
            args.address,
            args.rpc,
            concurrency=args.concurrency,
            seconds=args.seconds,
            warmup=warmup,
            server_pid=args.server_pid,
            ca_pem=Path(args.ca_file).read_bytes() if args.ca_file else None,
            token=args.token,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
