"""Runs looked up by id (GetRun, a watch's first look), read together.

On PostgreSQL lookups that arrive while a read is in flight wait for it to end and then
go together, one statement for all of them (GetRun at 32 calls in flight, through a
worker thread: about 560 us of server CPU per call, from 1,060). The statement runs on
the event loop (`RunsOnLoop`), so a run the replica's cache does not hold costs about
what one it holds does, and GetRun stays flat once the runs stored outgrow the cache
(the scale benchmark, p50 one call at a time: 1.05 ms at 10,000 runs and 0.90 at
100,000, against 0.91 and 1.82 through a worker thread). A lookup still starts its read
after it arrived, never joining one under way: it sees every write committed before it,
on any replica. On SQLite a lookup is a read on the event loop already, cheaper alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from psycopg.adapt import PyFormat, Transformer
from sqlalchemy.engine import URL

from runplane.server.records import Run
from runplane.server.store import fields
from runplane.server.store.loop_session import LoopSession

MAX_READS = 1
"""Reads in flight at once; lookups beyond wait for the next. One batches the most:
at 32 calls in flight, 2 cost 20% more CPU per call for no better latency."""
MAX_BATCH = 256
"""Run ids one read asks for at most."""

_Waiting = dict[str, list["asyncio.Future[Run | None]"]]


ReadRuns = Callable[[list[str]], Awaitable[list[Run]]]
"""One read of the runs with these ids (those that exist)."""


class RunLookups:
    """Behind `Database.read_run`: `read` reads runs by id, and `together` says whether
    lookups are better read together than alone."""

    def __init__(self, read: ReadRuns, *, together: bool) -> None:
        self._reader = read
        self._together = together
        self._waiting: _Waiting = {}
        """Lookups for the next read, by run id."""
        self._reading = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, run_id: str) -> Run | None:
        """The run with this id as committed when the call came, or None."""
        if not self._together:
            return _only(await self._reader([run_id]))
        if self._reading < MAX_READS:
            # Nobody waits while a read is free: read alone, at once.
            self._reading += 1
            try:
                return _only(await self._reader([run_id]))
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
        try:
            found = {run.run_id: run for run in await self._reader(list(batch))}
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


def _only(runs: list[Run]) -> Run | None:
    return runs[0] if runs else None


_COLUMNS = ", ".join(f'"{name}"' for name in fields.COLUMNS)
_SELECT = f"SELECT {_COLUMNS} FROM runs WHERE run_id"
RUN_BY_ID = f"{_SELECT} = $1"
"""Prepared once per connection: its plan is the primary key's whatever the table holds."""
RUNS_BY_ID = f"{_SELECT} = ANY($1::text[])"
"""Planned at each run: a plan for an array made while the table was small scans it."""
_RUN = b"runplane_run"
_RUNS = RUNS_BY_ID.encode()


class RunsOnLoop:
    """Runs by id, read on the event loop through a `LoopSession` of their own
    (PostgreSQL): a `ReadRuns`. One run is read by a prepared statement, whose plan is
    the primary key's index whatever the table holds; several by one statement planned
    each time, since a plan kept while the table was small would scan it."""

    def __init__(self, url: URL) -> None:
        self._session = LoopSession(url, {_RUN: RUN_BY_ID})

    async def __call__(self, run_ids: list[str]) -> list[Run]:
        transformer = Transformer()
        if len(run_ids) == 1:
            result = await self._session.execute(_RUN, [run_ids[0].encode()], prepared=True)
        else:
            values = transformer.dump_sequence([run_ids], [PyFormat.TEXT])
            result = await self._session.execute(_RUNS, values, prepared=False)
        transformer.set_pgresult(result)
        return transformer.load_rows(0, result.ntuples, fields.from_row)

    def close(self) -> None:
        self._session.close()
