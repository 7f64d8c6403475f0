"""Runs written straight through the store, for scenarios that need many of them fast.

CreateRun through gRPC manages a few hundred to a thousand runs a second; a backlog of
100,000 is written here instead, as the store writes any change (`UnitOfWork.apply`:
rows, thread heads, event log), a thousand per transaction, from the benchmark's own
process while the server runs.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice

from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork

BATCH = 1000
BACKLOG_ASSISTANTS = 20


def load(database_url: str, runs: Iterable[Run]) -> None:
    """Write `runs` as created, into the database a running server migrated already."""
    database = Database(database_url)

    async def write_all() -> None:
        pending = iter(runs)
        while changes := [Change(ChangeType.CREATED, run) for run in islice(pending, BATCH)]:
            await database.write(partial(UnitOfWork.apply, changes=changes))

    try:
        asyncio.run(write_all())
    finally:
        database.dispose()


def new_run(assistant_id: str, status: RunStatus = RunStatus.PENDING, **fields: object) -> Run:
    now = now_us()
    return Run(
        run_id=str(uuid.uuid4()),
        thread_id=str(uuid.uuid4()),
        assistant_id=assistant_id,
        status=status,
        multitask_strategy=MultitaskStrategy.ENQUEUE,
        created_at=now,
        updated_at=now,
        **fields,  # type: ignore[arg-type]
    )


def pending_backlog(count: int, seed: int = 1) -> Iterator[Run]:
    """PENDING runs, each on a thread of its own (so each is a thread head, ready to be
    claimed), for BACKLOG_ASSISTANTS assistants, in every priority."""
    rng = random.Random(seed)
    for index in range(count):
        yield new_run(f"backlog-{index % BACKLOG_ASSISTANTS}", priority=rng.randrange(10))


def running(
    count: int, assistant_id: str, worker_id: str, lease_us: int, kwargs_bytes: int = 0
) -> list[Run]:
    """RUNNING runs held by `worker_id`, as if it had claimed each just now, with kwargs
    of about `kwargs_bytes`."""
    now = now_us()
    kwargs = {"input": "x" * kwargs_bytes} if kwargs_bytes else {}
    return [
        new_run(
            assistant_id,
            RunStatus.RUNNING,
            attempt=1,
            worker_id=worker_id,
            started_at=now,
            lease_expires_at=now + lease_us,
            kwargs=kwargs,
        )
        for _ in range(count)
    ]
