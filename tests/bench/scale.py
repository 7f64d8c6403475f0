"""Latency at scale, in its own process against a running server:

    python -m tests.bench.scale --address HOST:PORT --database-url URL [--runs 100000]
        [--stages 10000,100000] [--samples 200] [--server-pid PID]

Runs are written straight through the store (as `backlog` writes them: rows, thread
heads, metadata index, event log; a thousand per transaction) in stages, to 10,000,
100,000 and `--runs` stored runs (1,000,000 on request). Of every ten, nine ended
(SUCCESS) on threads of nine runs, and one is PENDING on a thread of its own, queued
for `scale-queue`; every run's metadata names one of 50 teams. At each stage, once the
server has read the new events, one caller times `--samples` calls of each: GetRun of
a stored run, ListRuns' first page (20 runs) of a thread and of a team (metadata
filter), CreateRun, and ClaimRun of the queue. The contract (section 14) asks these to
stay within 1.5x of their 10,000-run values; a metadata filter's first page within 3x
of a thread's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import islice

import grpc
from google.protobuf import duration_pb2, struct_pb2
from sqlalchemy import Connection

from runplane.server.records import Change, ChangeType, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.bench.backlog import BATCH, new_run
from tests.bench.executor import wait_until_idle

pb = run_service_pb2
TEAMS = 50
THREAD_RUNS = 9
QUEUE = "scale-queue"
PAGE = 20
WARMUP = 10


@dataclasses.dataclass
class Stored:
    """What the benchmark wrote so far: ids to read back."""

    runs: list[str] = dataclasses.field(default_factory=list)
    threads: list[str] = dataclasses.field(default_factory=list)


def _runs(start: int, stop: int, stored: Stored) -> Iterator[tuple[Run, bool]]:
    """Runs number start..stop-1, each with whether it ends."""
    for index in range(start, stop):
        metadata = {"team": f"team-{index % TEAMS}", "seq": float(index)}
        kwargs = {"input": f"request {index} " + "x" * 200}
        if index % 10 == 9:
            yield new_run(QUEUE, metadata=metadata, kwargs=kwargs), False
            continue
        if not stored.threads or index % 10 == 0:
            stored.threads.append(new_run("scale").thread_id)
        run = new_run("scale", metadata=metadata, kwargs=kwargs)
        run.thread_id = stored.threads[-1]
        stored.runs.append(run.run_id)
        yield run, True


def _load(database_url: str, start: int, stop: int, stored: Stored) -> None:
    """Write runs start..stop-1: created, then (nine in ten) ended."""
    database = Database(database_url)

    def ended(run: Run, now: int) -> Change:
        done = dataclasses.replace(run, status=RunStatus.SUCCESS, ended_at=now, updated_at=now)
        return Change(ChangeType.UPDATED, done, previous=run)

    async def write_all() -> None:
        pending = _runs(start, stop, stored)
        while batch := list(islice(pending, BATCH)):
            created = [Change(ChangeType.CREATED, run) for run, _ in batch]
            await database.write(partial(UnitOfWork.apply, changes=created))
            now = now_us()
            endings = [ended(run, now) for run, ends in batch if ends]
            await database.write(partial(UnitOfWork.apply, changes=endings))

    try:
        asyncio.run(write_all())
    finally:
        database.dispose()


def _timed(call: Callable[[], object], samples: int) -> dict[str, float]:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[min(len(times) - 1, round(0.99 * (len(times) - 1)))], 3),
    }


Cell = dict[str, dict[str, float]]


def _measure(stub: run_service_pb2_grpc.RunServiceStub, stored: Stored, samples: int) -> Cell:
    rng = random.Random(7)
    lease = duration_pb2.Duration(seconds=600)

    def get() -> None:
        stub.GetRun(pb.GetRunRequest(run_id=rng.choice(stored.runs)))

    def list_thread() -> None:
        thread = pb.RunFilter(thread_id=rng.choice(stored.threads))
        assert stub.ListRuns(pb.ListRunsRequest(filter=thread, page_size=PAGE)).runs

    def list_metadata() -> None:
        team = struct_pb2.Struct()
        team.update({"team": f"team-{rng.randrange(TEAMS)}"})
        request = pb.ListRunsRequest(filter=pb.RunFilter(metadata=team), page_size=PAGE)
        assert stub.ListRuns(request).runs

    def create() -> None:
        stub.CreateRun(pb.CreateRunRequest(assistant_id="scale-create"))

    def claim() -> None:
        request = pb.ClaimRunRequest(worker_id="scale", assistant_ids=[QUEUE], lease_duration=lease)
        assert stub.ClaimRun(request).HasField("run")

    calls = {
        "get": get,
        "list_thread": list_thread,
        "list_metadata": list_metadata,
        "create": create,
        "claim": claim,
    }
    return {name: _timed(call, samples) for name, call in calls.items()}


TABLES = ("runs", "run_metadata", "thread_heads", "run_events")
_SIZES = {
    # Rows and indexes of each table, in pages (dbstat) or as PostgreSQL counts them.
    "sqlite": "SELECT s.tbl_name, SUM(d.pgsize) FROM dbstat AS d "
    "JOIN sqlite_schema AS s ON s.name = d.name GROUP BY s.tbl_name",
    "postgresql": "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
    "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
}


@contextmanager
def _connected(database_url: str) -> Iterator[Connection]:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            yield connection
    finally:
        database.dispose()


def _count(connection: Connection, table: str) -> int:
    return int(connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def _storage(database_url: str) -> dict[str, object]:
    """Bytes of each table with its indexes, and per stored run or logged change."""
    with _connected(database_url) as connection:
        backend = connection.dialect.name
        sizes = {
            table: int(size)
            for table, size in connection.exec_driver_sql(_SIZES[backend])
            if table in TABLES
        }
        runs, events = _count(connection, "runs"), _count(connection, "run_events")
        # An event's JSON, as the database keeps it: the run, and what of the run before
        # a filter needs.
        length = "length(CAST({} AS blob))" if backend == "sqlite" else "pg_column_size({})"
        run_json, event_json = connection.exec_driver_sql(
            f"SELECT avg({length.format('run')}), avg({length.format('run')} + "
            f"COALESCE({length.format('previous')}, 0)) FROM run_events"
        ).one()
    per_run = {table: round(sizes[table] / runs) for table in TABLES if table != "run_events"}
    return {
        "bytes": sizes,
        "bytes_per_run": per_run,
        "bytes_per_event": round(sizes["run_events"] / events),
        "event_json_per_run_json": round(float(event_json) / float(run_json), 3),
    }


def _stages(runs: int, stages: list[int]) -> list[int]:
    return sorted({stage for stage in stages if stage < runs} | {runs})


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--database-url", required=True, help="the server's database")
    parser.add_argument("--runs", type=int, default=100_000, help="stored runs at the end")
    parser.add_argument("--stages", default="10000,100000", help="measure at these too")
    parser.add_argument("--samples", type=int, default=200, help="timed calls of each RPC")
    parser.add_argument("--server-pid", type=int, default=None, help="wait for it to be idle")
    args = parser.parse_args()
    with _connected(args.database_url) as connection:
        already = _count(connection, "runs")
    if already:
        # The stages and the bytes per run count every run stored: they must all be ours.
        parser.error(f"the database already holds {already:,} runs; scale needs an empty one")
    stored = Stored()
    results: list[tuple[int, Cell]] = []
    written = 0
    with grpc.insecure_channel(args.address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        for stage in _stages(args.runs, [int(part) for part in args.stages.split(",") if part]):
            print(f"  scale: loading to {stage:,} runs", file=sys.stderr, flush=True)
            _load(args.database_url, written, stage, stored)
            written = stage
            if args.server_pid is not None:
                wait_until_idle(args.server_pid)  # its watch hub reads the new events
            cell = _measure(stub, stored, args.samples)
            results.append((stage, cell))
            print(f"    {json.dumps(cell)}", file=sys.stderr, flush=True)
    first, last = results[0][1], results[-1][1]
    print(
        json.dumps(
            {
                "scenario": "scale",
                "runs": args.runs,
                "samples": args.samples,
                "stages": [{"stored_runs": stage, **cell} for stage, cell in results],
                # The contract's measure: p50 at the most runs over p50 at the fewest.
                "p50_growth": {
                    rpc: round(last[rpc]["p50_ms"] / first[rpc]["p50_ms"], 2) for rpc in first
                },
                "storage": _storage(args.database_url),
                "metadata_vs_thread_p50": {
                    str(stage): round(
                        cell["list_metadata"]["p50_ms"] / cell["list_thread"]["p50_ms"], 2
                    )
                    for stage, cell in results
                },
            }
        )
    )


if __name__ == "__main__":
    main()
