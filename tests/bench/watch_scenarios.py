"""Watch scenarios of ``make bench``: fan-out latency, idle streams' memory, replicas.

Each runs ``tests.bench.watch`` in its own process against the target. The echo target
runs the latency and memory scenarios too (its WatchRuns is a bare grpc.aio broadcast),
so every run measures runplane next to the reference on the same machine, at the same
moment. Cross-replica latency needs a second server on the same database, so it runs
for the PostgreSQL target only: it starts a replica, creates through it and watches
through the target.
"""

from __future__ import annotations

import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from tests.bench.processes import RunningServer, running_server
from tests.bench.scenarios import BenchOptions, Result, Scenario, bench_module
from tests.bench.targets import RUNPLANE, Target

WATCHER_COUNTS = (1, 100, 1000)
IDLE_WATCHERS = 5000
RATE_PER_S = 10.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_watch(*args: str, timeout: float) -> Result:
    return bench_module("watch", *args, timeout=timeout)


def watch_latency(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """Create-to-receipt latency with 1, 100 and 1000 watchers at 10 changes/s."""
    results: list[Result] = []
    for watchers in WATCHER_COUNTS:
        _log(f"  {target.name}: watch latency, {watchers} watchers at {RATE_PER_S:g}/s")
        cell = _run_watch(
            "latency",
            *("--address", server.address, "--server-pid", str(server.pid)),
            *("--watchers", str(watchers), "--rate", str(RATE_PER_S)),
            *("--seconds", str(options.seconds)),
            timeout=120 + 2 * options.seconds,
        )
        _log(
            f"    p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms  "
            f"server cpu {cell['server_cpu_percent']}%"
        )
        results.append({"target": target.name, "scenario": "watch_latency", **cell})
    return results


def idle_watch_memory(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """The server's resident memory holding 5000 quiet watch streams."""
    _log(f"  {target.name}: {IDLE_WATCHERS} idle watch streams")
    cell = _run_watch(
        "idle",
        *("--address", server.address, "--server-pid", str(server.pid)),
        *("--watchers", str(IDLE_WATCHERS)),
        timeout=120,
    )
    _log(f"    rss {cell['rss_mb']} MB (before {cell['rss_before_mb']} MB)")
    return [{"target": target.name, "scenario": "watch_idle", **cell}]


def cross_replica_latency(
    target: Target, server: RunningServer, options: BenchOptions
) -> list[Result]:
    """A change made through a second replica, received by a watcher of the target."""
    if server.database_url is None or not server.database_url.startswith("postgresql"):
        return []
    _log(f"  {target.name}: cross-replica watch latency")
    argv = [str(RUNPLANE), "serve", "--address", "127.0.0.1:0"]
    with (
        TemporaryDirectory(prefix="runplane-bench-replica-") as workdir,
        running_server(
            [*argv, "--database-url", server.database_url], Path(workdir), "replica"
        ) as replica,
    ):
        cell = _run_watch(
            "latency",
            *("--address", server.address, "--writer-address", replica.address),
            *("--watchers", "1", "--rate", str(RATE_PER_S), "--seconds", str(options.seconds)),
            timeout=120 + 2 * options.seconds,
        )
    _log(f"    p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms")
    return [{"target": target.name, "scenario": "watch_cross_replica", **cell}]


WATCH_SCENARIOS: dict[str, Scenario] = {
    "watch_latency": watch_latency,
    "watch_cross_replica": cross_replica_latency,
    "watch_idle": idle_watch_memory,  # on a server of its own (run.OWN_SERVER)
}
