"""Runs looked up by id (GetRun, a watch's first look), read together.

On PostgreSQL each read is a trip to a worker thread and to the database, and their
fixed cost dwarfs the row's. So lookups that arrive while a read is in flight wait
for it to end and then go together, one query for all of them (GetRun at 32 calls in
flight: about 560 us of server CPU per call, from 1,060). A lookup still starts its
read after it arrived, never joining one under way: it sees every write committed
before it, on any replica. On SQLite a lookup is a read on the event loop already,
cheaper alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from runplane.server.records import Run
from runplane.server.store.unit_of_work import UnitOfWork

T = TypeVar("T")

MAX_READS = 1
"""Reads in flight at once; lookups beyond wait for the next. One batches the most:
at 32 calls in flight, 2 cost 20% more CPU per call for no better latency."""
MAX_BATCH = 256
"""Run ids one read asks for at most."""

_Waiting = dict[str, list["asyncio.Future[Run | None]"]]


class Read(Protocol):
    """`Database.read`, as lookups use it."""

    def __call__(self, work: Callable[[UnitOfWork], T], /) -> Awaitable[T]: ...


class RunLookups:
    """Behind `Database.read_run`: `read` is the database's read, and `together` says
    whether lookups are better read together than alone."""

    def __init__(self, read: Read, *, together: bool) -> None:
        self._reader = read
        self._together = together
        self._waiting: _Waiting = {}
        """Lookups for the next read, by run id."""
        self._reading = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, run_id: str) -> Run | None:
        """The run with this id as committed when the call came, or None."""
        if not self._together:
            return await self._reader(lambda unit: unit.runs.get(run_id))
        if self._reading < MAX_READS:
            # Nobody waits while a read is free: read alone, at once.
            self._reading += 1
            try:
                return await self._reader(lambda unit: unit.runs.get(run_id))
            finally:
                self._ended()
        future: asyncio.Future[Run | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(run_id, []).append(future)
        return await future

    def _ended(self, _read: object = None) -> None:
        """A read ended: the lookups waiting meanwhile go in the next one."""
        self._reading -= 1
        if not self._waiting:
            return
        if len(self._waiting) <= MAX_BATCH:
            batch, self._waiting = self._waiting, {}
        else:
            run_ids = list(self._waiting)[:MAX_BATCH]
            batch = {run_id: self._waiting.pop(run_id) for run_id in run_ids}
        self._reading += 1
        read = asyncio.create_task(self._read(batch))
        self._tasks.add(read)
        read.add_done_callback(self._tasks.discard)
        read.add_done_callback(self._ended)

    async def _read(self, batch: _Waiting) -> None:
        run_ids = list(batch)
        try:
            if len(run_ids) == 1:
                run = await self._reader(lambda unit: unit.runs.get(run_ids[0]))
                found = {} if run is None else {run.run_id: run}
            else:
                runs = await self._reader(lambda unit: unit.runs.get_many(run_ids))
                found = {run.run_id: run for run in runs}
            for run_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(run_id))
        except Exception as error:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
        finally:
            for futures in batch.values():
                for future in futures:
                    future.cancel()  # the read was cancelled (a no-op on the others)
