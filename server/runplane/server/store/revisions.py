"""The store's revision, read on the event loop (PostgreSQL).

A replica's run cache answers a lookup only once its watch hub is through the store's
revision as of the call (`cache.ReplicaCache`), so every such lookup reads it. A read
starts after each call it answers arrived, so no write committed before the call is
missed; the calls that arrive while a read is in flight share the next one.

Under load the calls come one per turn of the event loop and hardly ever share a read,
so what one read costs the loop is what matters. Through psycopg's asyncio connection
it cost about 150 µs of CPU: a task, a reader added and removed, a timer. Here the
statement is prepared once and sent through libpq's asynchronous interface
(`psycopg.pq`), on a connection whose socket the loop watches for as long as it is
open: about 60 µs, most of it the loop's wake-up.
"""

from __future__ import annotations

import asyncio

import psycopg
from psycopg import pq
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL

from runplane.server.errors import StoreUnavailable
from runplane.server.store.notifications import connect_on_loop

_STATEMENT = b"runplane_revision"
_REVISION = "SELECT revision FROM store_state"


class RevisionReads:
    def __init__(self, url: URL) -> None:
        self._url = url
        self._connection: psycopg.AsyncConnection[TupleRow] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[int] | None = None
        """What the calls of the read in flight wait for."""
        self._next: asyncio.Future[int] | None = None
        """What the calls that came since the read in flight began wait for."""
        self._revision: int | None = None
        """The read in flight's value, once its row has come."""
        self._socket = -1
        """The connection's socket, which the loop watches while it is open."""

    async def read(self) -> int:
        """The store's revision, read after the call came."""
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
            if self._reading is None:
                self._start()
        # The read belongs to every call waiting for it: one that leaves (its deadline)
        # must not cancel it for the others.
        return await asyncio.shield(future)

    def _start(self) -> None:
        """Send the read the calls since the last one wait for (connecting first if need be)."""
        self._reading, self._next = self._next, None
        if self._connection is not None:
            self._send(self._connection)
        elif self._connecting is None:
            self._connecting = asyncio.create_task(self._connect())

    def _send(self, connection: psycopg.AsyncConnection[TupleRow]) -> None:
        try:
            # A few bytes: libpq sends them at once (it waits only for a full socket).
            connection.pgconn.send_query_prepared(_STATEMENT, None)
        except psycopg.Error:
            self._lost()

    async def _connect(self) -> None:
        try:
            connection = await connect_on_loop(self._url)
            try:
                await connection.execute(f"PREPARE {_STATEMENT.decode()} AS {_REVISION}")
            except psycopg.Error:
                await connection.close()
                raise
        except psycopg.Error:
            self._connecting = None
            self._lost()
            return
        self._connecting = None
        self._socket = connection.pgconn.socket  # not to be asked of a lost connection
        asyncio.get_running_loop().add_reader(self._socket, self._readable)
        self._connection = connection
        if self._reading is not None:
            self._send(connection)

    def _readable(self) -> None:
        """The socket has data: the read's result, or the connection's end."""
        assert self._connection is not None
        pgconn = self._connection.pgconn
        try:
            pgconn.consume_input()
            while self._reading is not None and not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:  # the statement is done; the next may be sent
                    self._done()
                    break
                if result.status == pq.ExecStatus.TUPLES_OK:
                    value = result.get_value(0, 0)
                    assert value is not None, "store_state has its one row"
                    self._revision = int(value)
                else:
                    raise psycopg.OperationalError("the revision read failed")
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection was closed")
        except psycopg.Error:
            self._lost()

    def _done(self) -> None:
        revision, self._revision = self._revision, None
        self._answer(revision)

    def _lost(self) -> None:
        """The connection failed: the read in flight fails; the next one reconnects."""
        self._drop()
        self._revision = None
        self._answer(None)

    def _answer(self, revision: int | None) -> None:
        """Answer the read in flight (None: it failed), then send the next if calls wait."""
        future, self._reading = self._reading, None
        if future is not None and not future.done():
            if revision is None:
                future.set_exception(StoreUnavailable("unreachable"))
                future.exception()  # retrieved, should every caller have left
            else:
                future.set_result(revision)
        if self._next is not None:
            self._start()

    def _drop(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            asyncio.get_running_loop().remove_reader(self._socket)
            connection.pgconn.finish()

    def close(self) -> None:
        """Stop reading (at shutdown): calls still waiting are cancelled, and the
        connection is closed (`_drop`)."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        for future in (self._reading, self._next):
            if future is not None:
                future.cancel()
        self._reading = self._next = None
        self._drop()
