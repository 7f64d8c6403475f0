"""runplane's benchmark harness (``make bench``).

Measures runplane against a bare grpc.aio echo server on the same machine, the same way:
each target server is started fresh as a child process, every scenario in ``SCENARIOS``
(from ``tests.bench.scenarios`` and ``tests.bench.watch_scenarios``) drives it from a
separate load process, and the server is stopped before the next target starts. The
scenarios in ``OWN_SERVER`` each get a fresh server (and database) of their own after the
others. Progress goes to stderr; stdout gets one JSON document: the machine, every
result, runplane/echo ratios and the performance goals judged.

    python -m tests.bench.run [--seconds 5] [--targets echo,runplane-sqlite,...] [--rounds 3]
        [--tls] [--auth]

With ``--rounds N`` every target is measured N times, in turn, round after round, so that a
noisy neighbour hits them alike; each figure the JSON judges or compares (goals, ratios,
``variant_cost``, ``langgraph``) is then the median over the rounds, and ``results`` keeps
every round's cells. Variant targets (``runplane-sqlite-metrics``, ``-tracing``, ``-tls``,
``-auth``, ``-tls-auth``) run runplane with one feature on; ``variant_cost`` compares each
with its baseline, cell by cell. Variants run the unary scenario only. ``make
bench-telemetry`` compares metrics and tracing; ``--tls`` and/or ``--auth`` add the
matching variant of each runplane target selected.

The ``langgraph`` scenario (tests.bench.langgraph_compare) measures runplane's targets
against LangGraph Server's in-memory dev server, run once per round from a venv of its own
(``--langgraph-venv`` or RUNPLANE_BENCH_LANGGRAPH); without one the JSON's ``langgraph``
entry says it was skipped and how to install it, and runplane's side is not measured.

PostgreSQL is measured when a server URL is known (``--postgres-url``, or the environment's
RUNPLANE_BENCH_POSTGRES_URL or RUNPLANE_TEST_POSTGRES_URL); each run gets a database of its
own, dropped afterwards. Exit status 1 if a target or scenario could not run (the JSON then
lists it under ``failures``); performance goals missed do not change it unless ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import grpc

from tests.bench.langgraph_compare import ENVIRONMENT as LANGGRAPH_ENVIRONMENT
from tests.bench.langgraph_compare import SCENARIO as LANGGRAPH
from tests.bench.langgraph_compare import find_langgraph, measure_langgraph, runplane_side
from tests.bench.report import judge, langgraph_ratios, ratios, variant_cost
from tests.bench.scenarios import SCENARIOS as BASE_SCENARIOS
from tests.bench.scenarios import BenchOptions, Result, Scenario
from tests.bench.targets import Target, available_targets
from tests.bench.watch_scenarios import WATCH_SCENARIOS

SCENARIOS: dict[str, Scenario] = {**BASE_SCENARIOS, **WATCH_SCENARIOS, LANGGRAPH: runplane_side}

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _postgres_url(args: argparse.Namespace) -> str | None:
    url: str | None = (
        args.postgres_url
        or os.environ.get("RUNPLANE_BENCH_POSTGRES_URL")
        or os.environ.get("RUNPLANE_TEST_POSTGRES_URL")
    )
    return url or (DEFAULT_POSTGRES_URL if args.postgres else None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Scenarios: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="timed part of each cell")
    parser.add_argument("--concurrency", type=_csv, default=("1", "32"), help="e.g. 1,32")
    parser.add_argument("--rpcs", type=_csv, default=("create", "get"))
    parser.add_argument("--targets", type=_csv, default=None, help="default: every available")
    parser.add_argument("--scenarios", type=_csv, default=tuple(SCENARIOS))
    parser.add_argument("--rounds", type=int, default=1, help="measure every target N times")
    parser.add_argument(
        "--runs", type=int, default=100_000, help="scale: stored runs at the end (e.g. 1000000)"
    )
    parser.add_argument("--tls", action="store_true", help="add the TLS variant of each target")
    parser.add_argument("--auth", action="store_true", help="add the token-auth variant")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help=f"measure PostgreSQL, at {DEFAULT_POSTGRES_URL} "
        "unless a URL is given or in the environment",
    )
    parser.add_argument(
        "--langgraph-venv",
        default=None,
        help=f"langgraph scenario: a venv with langgraph-cli[inmem], or its langgraph "
        f"executable (default: ${LANGGRAPH_ENVIRONMENT}, else under ~/.cache/runplane-bench)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return args


def _select_targets(args: argparse.Namespace) -> list[Target]:
    available = available_targets(_postgres_url(args))
    names = args.targets or tuple(name for name, t in available.items() if t.baseline is None)
    suffix = "-".join(part for part, on in (("tls", args.tls), ("auth", args.auth)) if on)
    if suffix:
        variants = [f"{name}-{suffix}" for name in names if f"{name}-{suffix}" in available]
        names = tuple(dict.fromkeys((*names, *variants)))
    unknown = [name for name in names if name not in available]
    if unknown:
        known = ", ".join(available)
        raise SystemExit(f"unknown or unavailable target(s) {unknown}; available: {known}")
    return [available[name] for name in names]


OWN_SERVER = frozenset({"heartbeat", "scale", "watch_idle"})
"""Scenarios that each get a fresh server of their own, after the others: those whose
figures are of everything the server stores or holds (runs at each stage, bytes per
run, its memory), so that what the others left does not count; and `heartbeat`, whose
10,000 runs, their leases expiring once it stops, would load whatever came next (the
sweeper ends them all: p99 of 1,000 watchers on PostgreSQL 131 ms after it, 41 ms
alone)."""


def measure_target(
    target: Target, scenarios: tuple[str, ...], options: BenchOptions
) -> list[Result]:
    """Runs every scenario against fresh servers (one for all but those in OWN_SERVER,
    one for each of those); every server is gone when this returns."""
    if target.baseline is not None:
        # A variant is there to price its feature on unary calls.
        scenarios = tuple(name for name in scenarios if name == "unary")
    shared = tuple(name for name in scenarios if name not in OWN_SERVER)
    groups = ([shared] if shared else []) + [(name,) for name in scenarios if name in OWN_SERVER]
    results: list[Result] = []
    for group in groups:
        results.extend(_measure_on_fresh_server(target, group, options))
    return results


def _measure_on_fresh_server(
    target: Target, scenarios: tuple[str, ...], options: BenchOptions
) -> list[Result]:
    _log(f"{target.name}: starting")
    with (
        tempfile.TemporaryDirectory(prefix=f"runplane-bench-{target.name}-") as workdir,
        target.start(Path(workdir)) as server,
    ):
        _log(f"{target.name}: ready at {server.address}")
        results: list[Result] = []
        for name in scenarios:
            results.extend(SCENARIOS[name](target, server, options))
        return results


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    # Turns SIGTERM into SystemExit, so the `with` blocks stop the servers on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _raise_system_exit)
    args = parse_args(argv)
    options = BenchOptions(
        seconds=args.seconds,
        concurrencies=tuple(int(c) for c in args.concurrency),
        rpcs=args.rpcs,
        runs=args.runs,
    )
    targets = _select_targets(args)
    scenarios: tuple[str, ...] = args.scenarios
    if find_langgraph(args.langgraph_venv)[0] is None:
        # Nothing to compare with: runplane's side is not measured (LangGraph's says why).
        scenarios = tuple(name for name in scenarios if name != LANGGRAPH)
    started = time.monotonic()
    load_average = [round(x, 2) for x in os.getloadavg()]  # the machine is shared
    results: list[Result] = []
    failures: list[dict[str, str]] = []
    for round_ in range(args.rounds):
        for target in targets:
            try:
                cells = measure_target(target, scenarios, options)
            except Exception as error:  # one broken target must not hide the others' figures
                _log(f"{target.name}: FAILED: {error}")
                failures.append({"target": target.name, "error": str(error)})
                continue
            results.extend({**cell, "round": round_} for cell in cells)
        if LANGGRAPH in args.scenarios:
            try:
                cells = measure_langgraph(args.langgraph_venv, options)
            except Exception as error:
                _log(f"langgraph: FAILED: {error}")
                failures.append({"target": "langgraph", "error": str(error)})
                continue
            results.extend({**cell, "round": round_} for cell in cells)

    goals = judge(results, [t.name for t in targets])
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load_average,
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "options": {"seconds": options.seconds, "concurrency": list(options.concurrencies)},
        "results": results,
        "ratios": ratios(results),
        "langgraph": langgraph_ratios(results),
        "variant_cost": variant_cost(
            results, {t.name: t.baseline for t in targets if t.baseline is not None}
        ),
        "targets": goals,
        "failures": failures,
    }
    print(json.dumps(document, indent=2), flush=True)
    _log(f"done in {time.monotonic() - started:.0f} s; goals all pass: {goals['all_pass']}")
    if failures:
        return 1
    return 1 if args.strict and not goals["all_pass"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _log("interrupted; every server and load process was stopped")
        sys.exit(130)
