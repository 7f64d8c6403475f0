"""The store's revision, read on the event loop (PostgreSQL).

A replica's run cache answers a lookup only once its watch hub is through the store's
revision as of the call (`cache.ReplicaCache`), so every such lookup reads it. Through
the read pool that read cost as much as reading the run itself: the thread hop and the
SQLAlchemy statement, not the row, are most of a point read's cost. Here it is one
small statement on an asyncio psycopg connection of its own, with no thread, and the
calls that arrive while a read is in flight share the next one. A read still starts
after each call it answers arrived, so no write committed before the call is missed.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL

from runplane.server.errors import StoreUnavailable
from runplane.server.store.notifications import connect_on_loop

_REVISION = "SELECT revision FROM store_state"


class RevisionReads:
    def __init__(self, url: URL) -> None:
        self._url = url
        self._connection: psycopg.AsyncConnection[TupleRow] | None = None
        self._reading = False
        self._next: asyncio.Future[int] | None = None
        """What the calls that came since the read in flight began wait for."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self) -> int:
        """The store's revision, read after the call came."""
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
            if not self._reading:
                self._start()
        # Every read runs as a task of its own: a caller that leaves (its deadline) must
        # not cancel it for the others, nor halfway through on the connection.
        return await asyncio.shield(future)

    def _start(self) -> None:
        future, self._next = self._next, None
        assert future is not None
        self._reading = True
        task = asyncio.create_task(self._read(future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, future: asyncio.Future[int]) -> None:
        try:
            revision = await self._query()
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved, should every caller have left
        else:
            future.set_result(revision)
        finally:
            self._reading = False
            if self._next is not None:
                self._start()

    async def _query(self) -> int:
        try:
            if self._connection is None:
                self._connection = await connect_on_loop(self._url)
            cursor = await self._connection.execute(_REVISION)
            row = await cursor.fetchone()
        except psycopg.Error as error:
            await self.close_connection()
            raise StoreUnavailable("unreachable") from error
        assert row is not None, "store_state has its one row from the first migration"
        return int(row[0])

    async def close_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(psycopg.Error):
                await connection.close()

    async def close(self) -> None:
        """Stop reading (at shutdown): calls still waiting are cancelled."""
        for task in list(self._tasks):
            task.cancel()
        if self._next is not None:
            self._next.cancel()
        await self.close_connection()
