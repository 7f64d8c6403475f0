"""The cross-replica doorbell: a dedicated PostgreSQL connection that LISTENs for commits.

Writers notify on `CHANGES_CHANNEL` inside their transaction (`UnitOfWork.apply`);
this connection hears it when they commit, on whichever replica. Notifications sent
while it is disconnected are lost, so every (re)connection rings once as well: the
hub then re-reads the event log, which is the only source of truth.

This process hears its own commits through `Database.on_commit`, before their callers
are answered, so the listener passes on only other replicas' notifications. It knows
its own by the session that sent them (`OwnSessions`), not by their revision: a
notification often arrives before the writer thread has handed its commit to the
event loop, and then looked like another replica's, costing a read of the event log
and a claim's look for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from runplane.server.errors import StoreUnavailable
from runplane.server.store.dialects import CHANGES_CHANNEL

PROBE_INTERVAL = 10.0
"""Seconds without a notification after which the connection is checked to be alive."""
CONNECT_TIMEOUT = 5
"""Seconds a connection of the event loop's may take to (re)connect."""


async def connect_on_loop(url: URL) -> psycopg.AsyncConnection[TupleRow]:
    """A connection of the event loop's own (no pool, no thread), in autocommit, to the
    database `url` names."""
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
    )


class OwnSessions:
    """The server processes (backend pids) behind an engine's open connections, tracked
    from its first connection: the notifications they send are this process's commits.

    A commit whose writer never learned the outcome (its connection broke during
    COMMIT) is then not rung for; the hub's tailer finds it at its next poll.
    """

    def __init__(self, engine: Engine) -> None:
        self._pids: set[int] = set()
        event.listen(engine, "connect", self._opened)
        event.listen(engine, "close", self._closed)

    def __contains__(self, pid: int) -> bool:
        return pid in self._pids

    def _opened(self, connection: psycopg.Connection[Any], record: Any) -> None:
        pid = connection.info.backend_pid
        record.info[_BACKEND_PID] = pid
        self._pids.add(pid)

    def _closed(self, _connection: psycopg.Connection[Any], record: Any) -> None:
        # After this the server may give the pid to another replica's session.
        self._pids.discard(record.info.pop(_BACKEND_PID, 0))


_BACKEND_PID = "runplane_backend_pid"


class ChangeListener:
    """Calls `ring(revision)` on every commit notification of another replica (not from
    one of the `own` sessions), and `ring(0)` (revision not known) after each
    (re)connection and each lost connection.

    `listen` is one spell of listening, meant to be repeated by a `PeriodicTask`, which
    also backs off when the connection cannot be made.
    """

    def __init__(self, url: URL, ring: Callable[[int], None], own: OwnSessions) -> None:
        self._url = url
        self._ring = ring
        self._own = own
        self._connection: psycopg.AsyncConnection[TupleRow] | None = None

    async def listen(self) -> None:
        """Connect if need be, pass on notifications for up to PROBE_INTERVAL, then make
        sure a quiet connection is alive. A lost connection is StoreUnavailable."""
        try:
            if self._connection is None:
                connection = await connect_on_loop(self._url)
                self._connection = connection
                await connection.execute(f"LISTEN {CHANGES_CHANNEL}")
                self._ring(0)  # for whatever was committed while nobody listened
            async for notification in self._connection.notifies(timeout=PROBE_INTERVAL):
                if notification.pid in self._own:
                    continue
                payload = notification.payload
                self._ring(int(payload) if payload.isdigit() else 0)
            await self._connection.execute("SELECT 1")
        except psycopg.Error as error:
            await self.close()
            self._ring(0)  # the fallback poll carries on; look once now
            raise StoreUnavailable() from error

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
