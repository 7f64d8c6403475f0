"""The cross-replica doorbell: a dedicated PostgreSQL connection that LISTENs for commits.

Writers notify on `CHANGES_CHANNEL` inside their transaction (`UnitOfWork.apply`);
this connection hears it when they commit, on whichever replica. Notifications sent
while it is disconnected are lost, so every (re)connection rings once as well: the
hub then re-reads the event log, which is the only source of truth.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from sqlalchemy.engine import URL

from runplane.server.errors import StoreUnavailable
from runplane.server.store.dialects import CHANGES_CHANNEL

PROBE_INTERVAL = 10.0
"""Seconds without a notification after which the connection is checked to be alive."""
CONNECT_TIMEOUT = 5


class ChangeListener:
    """Calls `ring(revision)` on every commit notification, and `ring(0)` (revision not
    known) after each (re)connection and each lost connection.

    `listen` is one spell of listening, meant to be repeated by a `PeriodicTask`, which
    also backs off when the connection cannot be made.
    """

    def __init__(self, url: URL, ring: Callable[[int], None]) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._ring = ring
        self._connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def listen(self) -> None:
        """Connect if need be, pass on notifications for up to PROBE_INTERVAL, then make
        sure a quiet connection is alive. A lost connection is StoreUnavailable."""
        try:
            if self._connection is None:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                )
                self._connection = connection
                await connection.execute(f"LISTEN {CHANGES_CHANNEL}")
                self._ring(0)  # for whatever was committed while nobody listened
            async for notification in self._connection.notifies(timeout=PROBE_INTERVAL):
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
