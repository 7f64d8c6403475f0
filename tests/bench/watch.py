"""Watch benchmarks, run in their own process against a running server:

    python -m tests.bench.watch latency --address HOST:PORT --watchers N [--rate 10]
        [--seconds S] [--writer-address HOST:PORT]
    python -m tests.bench.watch idle --address HOST:PORT --watchers N --server-pid PID

latency: N WatchRuns streams (one grpc.aio channel per 100) while one writer creates a
run every 1/rate seconds; a change's latency, per stream, is from sending its CreateRun
to that stream receiving the event (so it includes the write; with --writer-address,
the write goes through another replica). The k-th event a stream receives is the k-th
create: the writer waits for each reply, and the streams filter on an assistant id of
their own. The echo server broadcasts each CreateRun the same way, so the two figures
compare runplane's watch path with bare grpc.aio.

idle: N streams opened and left quiet; reports the server's resident memory (VmRSS)
before and after, once every stream got its first message. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.bench.load import percentile_ms, process_cpu_s

STREAMS_PER_CHANNEL = 100
WatchCall = grpc.aio.UnaryStreamCall[
    run_service_pb2.WatchRunsRequest, run_service_pb2.WatchRunsResponse
]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@contextlib.asynccontextmanager
async def _channels(address: str, streams: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    count = max(1, -(-streams // STREAMS_PER_CHANNEL))
    # Each channel its own connection: channels to one address otherwise share one, which
    # holds no more streams at once than the server lets a connection hold.
    own = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=own) for _ in range(count)]
    try:
        yield channels
    finally:
        for channel in channels:
            await channel.close(None)


def _open_streams(
    channels: list[grpc.aio.Channel], streams: int, assistant_id: str
) -> list[WatchCall]:
    request = run_service_pb2.WatchRunsRequest(
        filter=run_service_pb2.RunFilter(assistant_id=assistant_id)
    )
    return [
        run_service_pb2_grpc.RunServiceStub(channels[index % len(channels)]).WatchRuns(request)
        for index in range(streams)
    ]


async def _opened(calls: list[WatchCall]) -> None:
    """Until every stream got its opening message (the opening bookmark). The streams are
    then read with `read()` too: grpc.aio does not mix it with `async for`."""
    await asyncio.gather(*(call.read() for call in calls))


async def latency(
    address: str,
    writer_address: str,
    *,
    watchers: int,
    rate: float,
    seconds: float,
    pid: int | None,
) -> dict[str, object]:
    assistant_id = f"bench-watch-{uuid.uuid4()}"
    creates = max(1, int(rate * seconds))
    sent: list[float] = []
    received: list[list[float]] = [[] for _ in range(watchers)]
    async with _channels(address, watchers) as channels:
        calls = _open_streams(channels, watchers, assistant_id)
        await _opened(calls)

        async def receive(index: int, call: WatchCall) -> None:
            while len(received[index]) < creates:
                response = await call.read()
                now = time.perf_counter()
                if not isinstance(response, run_service_pb2.WatchRunsResponse):
                    return  # the stream ended
                received[index].extend(now for _ in response.events)

        readers = [asyncio.create_task(receive(i, call)) for i, call in enumerate(calls)]
        cpu_before = None if pid is None else process_cpu_s(pid)
        started = time.perf_counter()
        async with grpc.aio.insecure_channel(writer_address) as writer_channel:
            writer = run_service_pb2_grpc.RunServiceStub(writer_channel)
            request = run_service_pb2.CreateRunRequest(assistant_id=assistant_id)
            for index in range(creates):
                await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
                sent.append(time.perf_counter())
                await writer.CreateRun(request, timeout=10)
        try:
            await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
        finally:
            for call in calls:
                call.cancel()
        elapsed = time.perf_counter() - started
        cpu_after = None if pid is None else process_cpu_s(pid)
    samples = sorted(
        int((times[k] - sent[k]) * 1e9) for times in received for k in range(len(sent))
    )
    return {
        "watchers": watchers,
        "rate_per_s": rate,
        "changes": creates,
        "samples": len(samples),
        "p50_ms": _round(percentile_ms(samples, 0.50)),
        "p99_ms": _round(percentile_ms(samples, 0.99)),
        "max_ms": _round(samples[-1] / 1e6) if samples else None,
        "server_cpu_percent": (
            None
            if cpu_before is None or cpu_after is None
            else round(100 * (cpu_after - cpu_before) / elapsed, 1)
        ),
    }


async def idle(address: str, watchers: int, pid: int) -> dict[str, object]:
    before = _rss_mb(pid)
    async with _channels(address, watchers) as channels:
        calls = _open_streams(channels, watchers, f"bench-idle-{uuid.uuid4()}")
        started = time.perf_counter()
        await _opened(calls)
        opened_s = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the server settle
        after = _rss_mb(pid)
        for call in calls:
            call.cancel()
    return {
        "watchers": watchers,
        "open_s": round(opened_s, 2),
        "rss_before_mb": before,
        "rss_mb": after,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mode", choices=["latency", "idle"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--writer-address", help="create through this server (a replica)")
    parser.add_argument("--watchers", type=int, required=True)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    if args.mode == "latency":
        result = asyncio.run(
            latency(
                args.address,
                args.writer_address or args.address,
                watchers=args.watchers,
                rate=args.rate,
                seconds=args.seconds,
                pid=args.server_pid,
            )
        )
    else:
        result = asyncio.run(idle(args.address, args.watchers, args.server_pid))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
