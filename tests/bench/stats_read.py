"""What GetStats' read costs as the backlog grows: the median of 20 reads of every
namespace's figures, over PENDING backlogs written straight through the store.

    python -m tests.bench.stats_read [--backend sqlite|postgres] [--runs 10000,100000]

The read counts the claimable thread heads and the inflight runs from their indexes,
so it grows with what waits (here every run is a claimable head), not with the runs
the store keeps; the gauges pay it once every --stats-interval per replica.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from runplane.server.stats import StatsService
from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade
from tests.bench.backlog import load, pending_backlog
from tests.support.databases import database_url

READS = 20


async def _median_read_ms(database: Database) -> float:
    stats = StatsService(database, lambda: 0)
    await stats.read(None)  # warm the pools and caches
    times = []
    for _ in range(READS):
        started = time.perf_counter()
        await stats.read(None)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(backend: str, runs: int) -> float:
    with tempfile.TemporaryDirectory() as folder, database_url(backend, Path(folder)) as url:
        database = Database(url)
        try:
            upgrade(database.engine)
            load(url, pending_backlog(runs))
            return asyncio.run(_median_read_ms(database))
        finally:
            database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", default="10000,100000")
    args = parser.parse_args()
    for runs in (int(count) for count in args.runs.split(",")):
        took = measure(args.backend, runs)
        print(f"{args.backend} {runs} pending runs: GetStats read {took:.1f} ms")


if __name__ == "__main__":
    main()
