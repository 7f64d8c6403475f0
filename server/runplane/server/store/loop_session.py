"""Statements run on the event loop, through libpq's asynchronous interface (PostgreSQL).

Some reads are one statement that a call waits for at once: the store's revision, a
run by its id. Through a worker thread such a read pays the hop there and back, the
interpreter lock and SQLAlchemy's execution on top of its round trip; through psycopg's
asyncio connection it pays a task, a reader added and removed and a timer. A
`LoopSession` pays little more than the round trip: its statements are prepared once,
sent with `psycopg.pq`, and answered from a callback on the connection's socket, which
the loop watches for as long as the connection is open (so a connection the server
ends while idle is noticed, and the next statement goes to a new one).

One statement is in flight at a time; the others wait in line, in the order they came.
A statement sent after a call came sees every write committed before it.

A prepared statement runs the plan PostgreSQL keeps for it, made once without its
parameters' values; only a statement whose best plan cannot depend on them (a lookup by
primary key) is prepared. The others are planned at each run, for the values they come
with and the table as it is then.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import pq
from psycopg.abc import Buffer
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL

from runplane.server.errors import StoreUnavailable
from runplane.server.store.notifications import connect_on_loop

Deliver = Callable[[pq.abc.PGresult | StoreUnavailable], None]
"""Takes a statement's rows, or the error it failed with (the connection could not be
had, or was lost before the rows came)."""


def _unreachable() -> StoreUnavailable:
    return StoreUnavailable("unreachable")


@dataclass(frozen=True, slots=True)
class _Execution:
    statement: bytes
    """A prepared statement's name, or SQL to plan now."""
    prepared: bool
    params: Sequence[Buffer | None] | None
    deliver: Deliver


class LoopSession:
    """A connection of the event loop's own, with `statements` (name -> SQL) prepared
    on it; connects at the first statement, and again after it was lost."""

    def __init__(self, url: URL, statements: Mapping[bytes, str]) -> None:
        self._url = url
        self._statements = dict(statements)
        self._connection: psycopg.AsyncConnection[TupleRow] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._line: deque[_Execution] = deque()
        self._running: _Execution | None = None
        self._result: pq.abc.PGresult | None = None
        """The running statement's rows, once they have come."""
        self._socket = -1
        """The connection's socket, which the loop watches while it is open."""

    async def execute(
        self, statement: bytes, params: Sequence[Buffer | None] | None = None, *, prepared: bool
    ) -> pq.abc.PGresult:
        """The rows of `statement` (see `submit`); StoreUnavailable if it failed."""
        future: asyncio.Future[pq.abc.PGresult] = asyncio.get_running_loop().create_future()

        def deliver(result: pq.abc.PGresult | StoreUnavailable) -> None:
            if future.done():  # its caller left (a deadline)
                return
            if isinstance(result, StoreUnavailable):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.submit(statement, params, prepared=prepared, deliver=deliver)
        return await future

    def submit(
        self,
        statement: bytes,
        params: Sequence[Buffer | None] | None,
        *,
        prepared: bool,
        deliver: Deliver,
    ) -> None:
        """Send `statement` (the name of one of `statements`, or else SQL; parameters in
        text form) after those already in line, and hand `deliver` its rows, from the
        socket's callback."""
        self._line.append(_Execution(statement, prepared, params, deliver))
        if self._running is None:
            self._send_next()

    def _send_next(self) -> None:
        """Send the first statement in line (connecting first if need be)."""
        if not self._line:
            return
        if self._connection is None:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect())
            return
        self._running = execution = self._line.popleft()
        pgconn = self._connection.pgconn
        try:
            # A few bytes: libpq sends them at once (it waits only for a full socket).
            if execution.prepared:
                pgconn.send_query_prepared(execution.statement, execution.params)
            else:
                pgconn.send_query_params(execution.statement, execution.params)
        except psycopg.Error:
            self._lost()

    async def _connect(self) -> None:
        try:
            connection = await connect_on_loop(self._url)
            try:
                for name, sql in self._statements.items():
                    await connection.execute(f"PREPARE {name.decode()} AS {sql}")
            except psycopg.Error:
                await connection.close()
                raise
        except psycopg.Error:
            self._connecting = None
            # Every statement in line asked before the connection failed: none waits
            # for a connect of its own.
            line, self._line = self._line, deque()
            for execution in line:
                execution.deliver(_unreachable())
            return
        self._connecting = None
        self._socket = connection.pgconn.socket  # not to be asked of a lost connection
        asyncio.get_running_loop().add_reader(self._socket, self._readable)
        self._connection = connection
        self._send_next()

    def _readable(self) -> None:
        """The socket has data: the running statement's result, or the connection's end."""
        assert self._connection is not None
        pgconn = self._connection.pgconn
        try:
            pgconn.consume_input()
            while self._running is not None and not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:  # the statement is done; the next may be sent
                    self._done()
                    break
                if result.status == pq.ExecStatus.TUPLES_OK:
                    self._result = result
                else:
                    raise psycopg.OperationalError("a statement on the loop failed")
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection was closed")
        except psycopg.Error:
            self._lost()
            return
        if self._running is None:
            self._send_next()

    def _done(self) -> None:
        execution, self._running = self._running, None
        result, self._result = self._result, None
        assert execution is not None
        execution.deliver(_unreachable() if result is None else result)

    def _lost(self) -> None:
        """The connection failed: the running statement fails; the next reconnects."""
        self._drop()
        self._result = None
        execution, self._running = self._running, None
        if execution is not None:
            execution.deliver(_unreachable())
        if self._running is None:
            self._send_next()

    def _drop(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            asyncio.get_running_loop().remove_reader(self._socket)
            connection.pgconn.finish()

    def close(self) -> None:
        """Stop (at shutdown): statements in line or running fail, and the connection is
        closed."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        running = [self._running] if self._running is not None else []
        line, self._line, self._running = self._line, deque(), None
        self._drop()
        for execution in [*running, *line]:
            execution.deliver(_unreachable())
