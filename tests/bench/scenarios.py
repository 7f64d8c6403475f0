"""What the benchmark measures against each running target.

A scenario is a function ``(target, server, options) -> results``: it drives the running
server and returns flat JSON-ready result records. The harness runs every scenario
against every target and knows nothing else about them, so a new measurement (watch
latency, claim latency) is a new function, in this module or its own, added to
``SCENARIOS``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.bench.processes import RunningServer
from tests.bench.targets import REPO_ROOT, Target

Result = dict[str, object]


@dataclass(frozen=True)
class BenchOptions:
    seconds: float
    concurrencies: tuple[int, ...]
    rpcs: tuple[str, ...]
    runs: int = 100_000
    """The scale scenario's stored runs at its last stage."""


Scenario = Callable[[Target, RunningServer, BenchOptions], list[Result]]


class LoadFailedError(RuntimeError):
    """The load generator failed: the cell has no numbers."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_load(server: RunningServer, rpc: str, concurrency: int, seconds: float) -> Result:
    """One cell: the load generator in its own process, so it never shares a GIL with us."""
    argv = [
        sys.executable,
        "-m",
        "tests.bench.load",
        *("--address", server.address, "--server-pid", str(server.pid), "--rpc", rpc),
        *("--concurrency", str(concurrency), "--seconds", str(seconds)),
        *server.load_args,
    ]
    # Generous: set-up creates a pool of runs before the timed part. On timeout or Ctrl-C,
    # subprocess.run kills the child before re-raising.
    completed = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60 + 3 * seconds, check=False
    )
    if completed.returncode != 0:
        raise LoadFailedError(
            f"load generator exited {completed.returncode} ({rpc}, concurrency {concurrency}):\n"
            f"{completed.stderr.strip()}"
        )
    result: Result = json.loads(completed.stdout)
    return result


def unary_calls(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """Throughput and latency of unary calls, one load process per (rpc, concurrency)."""
    results: list[Result] = []
    for rpc in options.rpcs:
        for concurrency in options.concurrencies:
            _log(f"  {target.name}: {rpc} x {concurrency} for {options.seconds:g} s")
            started = time.monotonic()
            cell = run_load(server, rpc, concurrency, options.seconds)
            _log(
                f"    {cell['throughput_per_s']}/s  p50 {cell['p50_ms']} ms  "
                f"p99 {cell['p99_ms']} ms  errors {cell['errors']}  "
                f"server cpu {cell['server_cpu_percent']}%  "
                f"client cpu {cell['client_cpu_percent']}%  "
                f"({time.monotonic() - started:.1f} s)"
            )
            results.append({"target": target.name, "scenario": "unary", **cell})
    return results


def bench_module(module: str, *args: str, timeout: float = 300) -> Result:
    """What `python -m tests.bench.<module> ARGS` prints, parsed; its stderr if it fails."""
    completed = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{module}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise LoadFailedError(f"tests.bench.{module} failed:\n{completed.stderr.strip()}")
    cell: Result = json.loads(completed.stdout)
    return cell


def bench_process(server: RunningServer, *args: str, module: str, timeout: float = 300) -> Result:
    """What `python -m tests.bench.<module> --address ADDRESS ARGS` prints, parsed."""
    return bench_module(module, "--address", server.address, *args, timeout=timeout)


def _executor_cell(server: RunningServer, *args: str, module: str = "executor") -> Result:
    cell = bench_process(server, *args, module=module)
    rate = cell.get("throughput_per_s", "-")
    cpu = cell.get("server_cpu_us_per_run") or cell.get("server_cpu_percent")
    _log(f"    {rate}/s  p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms  server cpu {cpu}")
    return cell


def executor_latency(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """Create-to-claim latency with a long-polling worker, then create -> claim ->
    complete -> wait_run end to end at 1 and 16 clients, then create-to-claim again
    behind a backlog of BACKLOG runs of other assistants in every priority (runplane
    targets only)."""
    if target.name == "echo" or server.database_url is None:
        return []
    pid = ("--server-pid", str(server.pid))
    _log(f"  {target.name}: create-to-claim")
    cell = _executor_cell(server, "--mode", "create-to-claim", *pid)
    results = [{"target": target.name, **cell}]
    for clients in (1, 16):
        _log(f"  {target.name}: end to end, {clients} clients, 8 workers")
        cell = _executor_cell(
            server,
            *("--mode", "end-to-end", "--clients", str(clients), "--workers", "8"),
            *("--seconds", str(options.seconds)),
        )
        results.append({"target": target.name, **cell})
    _log(f"  {target.name}: create-to-claim behind {BACKLOG:,} queued runs (loading them)")
    cell = _executor_cell(
        server,
        *("--mode", "create-to-claim", *pid, "--backlog", str(BACKLOG)),
        *("--database-url", server.database_url),
    )
    results.append({"target": target.name, **cell})
    return results


def heartbeats(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """HEARTBEAT_RUNS running runs with 10 s leases keeping them alive, each every third
    of its lease, for at least 20 s: the server's and (PostgreSQL) the database's CPU."""
    if target.name == "echo" or server.database_url is None:
        return []
    _log(f"  {target.name}: {HEARTBEAT_RUNS:,} runs heartbeating (loading them)")
    cell = _executor_cell(
        server,
        *("--database-url", server.database_url, "--server-pid", str(server.pid)),
        *("--runs", str(HEARTBEAT_RUNS), "--seconds", str(max(20.0, options.seconds))),
        module="heartbeats",
    )
    _log(f"    target {cell['target_per_s']}/s, database cpu {cell['database_cpu_percent']}%")
    return [{"target": target.name, **cell}]


def scale(target: Target, server: RunningServer, options: BenchOptions) -> list[Result]:
    """GetRun, ListRuns (first page of a thread, of a metadata filter), CreateRun and
    ClaimRun latencies at 10,000, 100,000 and `--runs` stored runs (runplane targets
    only); see tests/bench/scale.py."""
    if target.name == "echo" or server.database_url is None:
        return []
    _log(f"  {target.name}: latencies at up to {options.runs:,} stored runs (loading them)")
    cell = bench_process(
        server,
        *("--database-url", server.database_url, "--server-pid", str(server.pid)),
        *("--runs", str(options.runs)),
        module="scale",
        # Loading takes most of it: about a minute per 100,000 runs on a small machine.
        timeout=300 + options.runs / 100,
    )
    _log(f"    p50 growth {cell['p50_growth']}; metadata/thread {cell['metadata_vs_thread_p50']}")
    return [{"target": target.name, **cell}]


BACKLOG = 100_000
HEARTBEAT_RUNS = 10_000

SCENARIOS: dict[str, Scenario] = {
    "unary": unary_calls,
    "executor": executor_latency,
    "heartbeat": heartbeats,
    "scale": scale,
}
